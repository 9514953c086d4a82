//! The exchange class: `exchange.declare` (direct, fanout, topic, headers and the configured
//! plugin types; passive or not; in RabbitMQ's order: 503 on the connection for an unknown
//! type, then 403 for the default exchange, then the rest, e.g. 403 for a new `amq.` name),
//! `exchange.delete` and exchange-to-exchange bindings (answered, not routed).

use super::state::{ChannelError, Exchange};
use super::{lossy, Broker, ConnId};
use crate::rules::known_exchange_type;
use std::time::Instant;
use warren_core::method::{ids, MethodId};
use warren_core::reply;
use warren_core::wire::Reader;

impl Broker {
    /// `exchange.*`.
    pub(super) fn exchange_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        r: &mut Reader<'_>,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::EXCHANGE_DECLARE => {
                rd!(r.u16());
                let name = lossy(rd!(r.shortstr()));
                let kind_bytes = rd!(r.shortstr());
                let kind = lossy(kind_bytes);
                let passive = rd!(r.bit());
                let (_durable, _auto_delete, _internal) =
                    (rd!(r.bit()), rd!(r.bit()), rd!(r.bit()));
                let nowait = rd!(r.bit());
                let known = known_exchange_type(kind_bytes, &self.config.plugin_exchange_types);
                if !passive && name.is_empty() {
                    let asked = &mut self.log.default_exchange_declares;
                    *if known { &mut asked.0 } else { &mut asked.1 } += 1;
                }
                if !passive && !known {
                    // RabbitMQ checks the type first (`rabbit_exchange:check_type`), and an
                    // unknown one is a connection error, whatever the name. The checker let it
                    // through only on a connection with no other channel (warren asking about
                    // a type, B7): no neighbour loses anything, so it is no violation.
                    let text = format!("unknown exchange type '{kind}'");
                    self.close_conn(now, id, reply::COMMAND_INVALID, text, mid);
                    return Ok(());
                }
                if passive {
                    if !self.exchanges.contains_key(&name) && !name.is_empty() {
                        return Err(ChannelError(
                            reply::NOT_FOUND,
                            format!("no exchange '{name}' in vhost '/'"),
                            mid,
                        ));
                    }
                } else if name.is_empty() {
                    return Err(ChannelError(
                        reply::ACCESS_REFUSED,
                        "operation not permitted on the default exchange".into(),
                        mid,
                    ));
                } else {
                    match self.exchanges.get(&name) {
                        Some(e) if e.kind != kind => {
                            return Err(ChannelError(
                                reply::PRECONDITION_FAILED,
                                format!("inequivalent arg 'type' for exchange '{name}'"),
                                mid,
                            ))
                        }
                        Some(_) => {}
                        None if name.starts_with("amq.") => {
                            return Err(ChannelError(
                                reply::ACCESS_REFUSED,
                                format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                                mid,
                            ))
                        }
                        None => {
                            self.exchanges.insert(
                                name,
                                Exchange {
                                    kind,
                                    bindings: Vec::new(),
                                },
                            );
                        }
                    }
                }
                if !nowait {
                    self.send_method(now, id, ch, ids::EXCHANGE_DECLARE_OK, |_| {});
                }
            }
            ids::EXCHANGE_DELETE => {
                rd!(r.u16());
                let name = lossy(rd!(r.shortstr()));
                let _if_unused = rd!(r.bit());
                let nowait = rd!(r.bit());
                if !name.starts_with("amq.") {
                    self.exchanges.remove(&name);
                }
                if !nowait {
                    self.send_method(now, id, ch, MethodId::new(40, 21), |_| {});
                }
            }
            ids::EXCHANGE_BIND | ids::EXCHANGE_UNBIND => {
                let ok = if mid == ids::EXCHANGE_BIND {
                    MethodId::new(40, 31)
                } else {
                    MethodId::new(40, 51)
                };
                self.send_method(now, id, ch, ok, |_| {});
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }
}
