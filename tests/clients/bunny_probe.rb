# bunny probe for tests/tests/clients.rs: runs one scenario and prints one JSON line saying what
# bunny reported. See tests/clients/README.md for the arguments, the scenarios and the output.
require "bunny"
require "json"
require "timeout"

# What bunny reported: its exception class, and the reply code and text it carries.
def outcome_of(e)
  close = e.respond_to?(:channel_close) ? e.channel_close : nil
  close ||= e.connection_close if e.respond_to?(:connection_close)
  code = close&.reply_code
  text = close ? close.reply_text : e.message
  code ||= text[/\b([345]\d\d)\b/, 1]&.to_i
  { outcome: "error", kind: e.class.name, code: code, text: text }
end

# Runs one step: {outcome: "ok", ...whatever the block returns} or the error bunny raised.
def step
  { outcome: "ok" }.merge(yield || {})
rescue Bunny::Exception => e
  outcome_of(e)
end

# bunny's basic_get is not woken when the broker closes its channel: it raises the channel's
# error only once continuation_timeout has passed (against RabbitMQ itself too), hence 10 s.
def connect(host, port, user, password, vhost)
  conn = Bunny.new(host: host, port: port.to_i, user: user, pass: password, vhost: vhost,
                   automatically_recover: false, connection_timeout: 20, read_timeout: 20,
                   continuation_timeout: 10_000, log_level: :fatal)
  conn.start
end

def publish_get(conn, queue)
  ch = conn.create_channel
  ch.queue_declare(queue)
  ch.default_exchange.publish("hello", routing_key: queue)
  _info, _props, body = ch.basic_get(queue, manual_ack: false)
  ch.queue_delete(queue)
  ch.close
  { body: body }
end

# The consumer tag of the consumer_cancelled scenario.
CTAG = "probe-ctag"

# A consumer receives a message; a second connection deletes its queue; bunny calls the
# consumer's on_cancellation block when the broker cancels it.
def consumer_cancelled(conn, other, queue)
  ch = conn.create_channel
  q = ch.queue(queue)
  delivered = Queue.new
  cancelled = Queue.new
  consumer = Bunny::Consumer.new(ch, q, CTAG, true)
  consumer.on_delivery { |_info, _props, body| delivered << body }
  consumer.on_cancellation { |frame| cancelled << frame.consumer_tag }
  q.subscribe_with(consumer)
  ch.default_exchange.publish("hello", routing_key: queue)
  body = Timeout.timeout(20) { delivered.pop }
  other.create_channel.queue_delete(queue)
  { delivered: body, cancelled: Timeout.timeout(20) { cancelled.pop } }
end

def run(host, port, user, password, vhost, scenario, queue)
  case scenario
  when "wrong_password", "unknown_vhost"
    conn = connect(host, port, user, password, vhost)
    conn.create_channel
    conn.close
    { outcome: "ok" }
  when "publish_get"
    conn = connect(host, port, user, password, vhost)
    result = step { publish_get(conn, queue) }
    conn.close
    result
  when "passive_missing_queue"
    conn = connect(host, port, user, password, vhost)
    result = {
      passive: step { conn.create_channel.queue_declare(queue, passive: true) && nil },
      after: step { publish_get(conn, queue) },
    }
    conn.close
    result
  when "exclusive_locked"
    owner = connect(host, port, user, password, vhost)
    owner_ch = owner.create_channel
    owner_ch.queue_declare(queue, exclusive: true)
    other = connect(host, port, user, password, vhost)
    result = {
      passive: step { other.create_channel.queue_declare(queue, passive: true) && nil },
      get: step { other.create_channel.basic_get(queue, manual_ack: false) && nil },
      delete: step { other.create_channel.queue_delete(queue) && nil },
    }
    other.close
    owner_ch.queue_delete(queue)
    owner.close
    result
  when "consumer_cancelled"
    conn = connect(host, port, user, password, vhost)
    other = connect(host, port, user, password, vhost)
    result = {
      consume: step { consumer_cancelled(conn, other, queue) },
      after: step { publish_get(conn, queue) },
    }
    other.close
    conn.close
    result
  else
    abort "unknown scenario #{scenario.inspect}"
  end
end

begin
  result = run(*ARGV.first(7))
rescue Bunny::Exception => e
  result = outcome_of(e)
end
puts JSON.generate(result.sort.to_h)
