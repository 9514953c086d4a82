<?php
// php-amqp (PECL amqp over librabbitmq) probe for tests/tests/clients.rs: runs one scenario and
// prints one JSON line saying what the extension reported. See tests/clients/README.md for the
// arguments, the scenarios and the output.

// What php-amqp reported: the exception's class, its code and its message.
function outcome_of(AMQPException $e): array
{
    return ['outcome' => 'error', 'kind' => get_class($e), 'code' => $e->getCode(), 'text' => $e->getMessage()];
}

// Runs one step: ['outcome' => 'ok', ...the array $f returns, if any] or the exception php-amqp
// threw.
function step(callable $f): array
{
    try {
        $fields = $f();
        return ['outcome' => 'ok'] + (is_array($fields) ? $fields : []);
    } catch (AMQPException $e) {
        return outcome_of($e);
    }
}

function connect(array $a): AMQPConnection
{
    [$host, $port, $user, $password, $vhost] = $a;
    $conn = new AMQPConnection([
        'host' => $host, 'port' => (int) $port, 'login' => $user, 'password' => $password, 'vhost' => $vhost,
        'connect_timeout' => 20, 'read_timeout' => 20, 'write_timeout' => 20,
    ]);
    $conn->connect();
    return $conn;
}

function queue(AMQPConnection $conn, string $name, int $flags = AMQP_NOPARAM): AMQPQueue
{
    $q = new AMQPQueue(new AMQPChannel($conn));
    $q->setName($name);
    $q->setFlags($flags);
    return $q;
}

function publish_get(AMQPConnection $conn, string $queue): array
{
    $q = queue($conn, $queue);
    $q->declareQueue();
    (new AMQPExchange($q->getChannel()))->publish('hello', $queue);
    $msg = $q->get(AMQP_AUTOACK);
    $q->delete();
    $q->getChannel()->close();
    return ['body' => $msg === false ? null : $msg->getBody()];
}

function run(array $a): array
{
    [, , , , , $scenario, $queue] = $a;
    switch ($scenario) {
        case 'wrong_password':
        case 'unknown_vhost':
            $conn = connect($a);
            new AMQPChannel($conn);
            $conn->disconnect();
            return ['outcome' => 'ok'];
        case 'publish_get':
            $conn = connect($a);
            $result = step(fn () => publish_get($conn, $queue));
            $conn->disconnect();
            return $result;
        case 'passive_missing_queue':
            $conn = connect($a);
            $result = [
                'passive' => step(fn () => queue($conn, $queue, AMQP_PASSIVE)->declareQueue()),
                'after' => step(fn () => publish_get($conn, $queue)),
            ];
            $conn->disconnect();
            return $result;
        case 'exclusive_locked':
            $owner = connect($a);
            $owned = queue($owner, $queue, AMQP_EXCLUSIVE);
            $owned->declareQueue();
            $other = connect($a);
            $result = [
                'passive' => step(fn () => queue($other, $queue, AMQP_PASSIVE)->declareQueue()),
                'get' => step(fn () => queue($other, $queue)->get(AMQP_AUTOACK)),
                'delete' => step(fn () => queue($other, $queue)->delete()),
            ];
            $other->disconnect();
            $owned->delete();
            $owner->disconnect();
            return $result;
    }
    fwrite(STDERR, "unknown scenario $scenario\n");
    exit(2);
}

try {
    $result = run(array_slice($argv, 1, 7));
} catch (AMQPException $e) {
    $result = outcome_of($e);
}
echo json_encode($result, JSON_UNESCAPED_SLASHES), "\n";
