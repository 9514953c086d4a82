//! The fake RabbitMQ (moving here from `sim/src/broker/`, issue 15).
