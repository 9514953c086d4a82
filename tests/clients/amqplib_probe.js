// amqplib probe for tests/tests/clients.rs: runs one scenario and prints one JSON line saying what
// amqplib reported. See tests/clients/README.md for the arguments, the scenarios and the output.
'use strict';
const amqp = require('amqplib');

// What amqplib reported: the error's class, its reply code (amqplib sets `code` on channel and
// connection closes; a refused handshake has it only in the message) and its message.
function outcomeOf(e) {
  const found = /\b([345]\d\d) \(/.exec(e.message);
  const code = typeof e.code === 'number' ? e.code : found ? Number(found[1]) : null;
  return {outcome: 'error', kind: e.constructor.name, code, text: e.message};
}

// Runs one step: {outcome: 'ok', ...whatever f returns} or the error amqplib rejected with.
async function step(f) {
  try {
    return {outcome: 'ok', ...(await f())};
  } catch (e) {
    return outcomeOf(e);
  }
}

async function connect(host, port, user, password, vhost) {
  const conn = await amqp.connect({protocol: 'amqp', hostname: host, port: Number(port), username: user, password, vhost}, {timeout: 20000});
  conn.on('error', () => {}); // reported by the operation that failed
  return conn;
}

// A new channel (a channel error closes the channel; the failed operation reports it).
async function channel(conn) {
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  return ch;
}

async function publishGet(conn, queue) {
  const ch = await channel(conn);
  await ch.assertQueue(queue, {durable: false});
  ch.sendToQueue(queue, Buffer.from('hello'));
  const msg = await ch.get(queue, {noAck: true});
  await ch.deleteQueue(queue);
  await ch.close();
  return {body: msg ? msg.content.toString() : null};
}

// An RPC over direct reply-to: the requester consumes amq.rabbitmq.reply-to and publishes a
// request naming it; a second channel gets the request and publishes the answer to the name
// the broker put in its replyTo.
async function directReplyTo(conn, queue) {
  const requester = await channel(conn);
  let answered;
  const reply = new Promise((resolve) => { answered = resolve; });
  await requester.consume('amq.rabbitmq.reply-to', (msg) => answered(msg.content.toString()), {noAck: true});
  const responder = await channel(conn);
  await responder.assertQueue(queue, {durable: false});
  requester.sendToQueue(queue, Buffer.from('ping'), {replyTo: 'amq.rabbitmq.reply-to'});
  let request = false;
  while (!request) request = await responder.get(queue, {noAck: true});
  const to = request.properties.replyTo;
  responder.sendToQueue(to, Buffer.from('pong'));
  const result = {request: request.content.toString(), reply: await reply, generated: to.startsWith('amq.rabbitmq.reply-to.')};
  await responder.deleteQueue(queue);
  return result;
}

// The consumer tag of the consumer_cancelled scenario.
const CTAG = 'probe-ctag';

// A consumer receives a message; a second connection deletes its queue; amqplib calls the
// consumer with null when the broker cancels it.
async function consumerCancelled(conn, other, queue) {
  const ch = await channel(conn);
  await ch.assertQueue(queue, {durable: false});
  let delivered, cancelled;
  const got = new Promise((resolve) => { delivered = resolve; });
  const gone = new Promise((resolve) => { cancelled = resolve; });
  await ch.consume(queue, (msg) => (msg === null ? cancelled(CTAG) : delivered(msg.content.toString())), {noAck: true, consumerTag: CTAG});
  ch.sendToQueue(queue, Buffer.from('hello'));
  const body = await got;
  await (await channel(other)).deleteQueue(queue);
  return {delivered: body, cancelled: await gone};
}

async function replyToWithoutConsumer(conn, queue) {
  const ch = await channel(conn);
  ch.sendToQueue(queue, Buffer.from('ping'), {replyTo: 'amq.rabbitmq.reply-to'});
  await ch.get(queue); // the broker's channel error comes first
}

async function run(host, port, user, password, vhost, scenario, queue) {
  const open = () => connect(host, port, user, password, vhost);
  switch (scenario) {
    case 'wrong_password':
    case 'unknown_vhost': {
      const conn = await open();
      await channel(conn);
      await conn.close();
      return {outcome: 'ok'};
    }
    case 'publish_get': {
      const conn = await open();
      const result = await step(() => publishGet(conn, queue));
      await conn.close();
      return result;
    }
    case 'passive_missing_queue': {
      const conn = await open();
      const result = {
        passive: await step(async () => void (await (await channel(conn)).checkQueue(queue))),
        after: await step(() => publishGet(conn, queue)),
      };
      await conn.close();
      return result;
    }
    case 'exclusive_locked': {
      const owner = await open();
      const ownerCh = await channel(owner);
      await ownerCh.assertQueue(queue, {exclusive: true, durable: false});
      const other = await open();
      const result = {
        passive: await step(async () => void (await (await channel(other)).checkQueue(queue))),
        get: await step(async () => void (await (await channel(other)).get(queue, {noAck: true}))),
        delete: await step(async () => void (await (await channel(other)).deleteQueue(queue))),
      };
      await other.close();
      await ownerCh.deleteQueue(queue);
      await owner.close();
      return result;
    }
    case 'direct_reply_to': {
      const conn = await open();
      const result = {
        rpc: await step(() => directReplyTo(conn, queue)),
        no_consumer: await step(() => replyToWithoutConsumer(conn, queue)),
        acking: await step(async () => void (await (await channel(conn)).consume('amq.rabbitmq.reply-to', () => {}, {noAck: false}))),
      };
      await conn.close();
      return result;
    }
    case 'consumer_cancelled': {
      const conn = await open();
      const other = await open();
      const result = {
        consume: await step(() => consumerCancelled(conn, other, queue)),
        after: await step(() => publishGet(conn, queue)),
      };
      await other.close();
      await conn.close();
      return result;
    }
    default:
      console.error(`unknown scenario ${JSON.stringify(scenario)}`);
      process.exit(2);
  }
}

run(...process.argv.slice(2, 9))
  .catch(outcomeOf)
  .then((result) => {
    console.log(JSON.stringify(result));
    process.exit(0);
  });
