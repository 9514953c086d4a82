//! Simulated links: each client's and each broker connection's two byte pipes, FIFO with a
//! latency. The links own the bytes in flight; the world schedules the deliveries they
//! announce and decides when a path is cut.

use crate::trace::Tap;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Which way bytes travel on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Dir {
    /// From the client or broker to warren.
    ToProxy,
    /// From warren to the client or broker.
    FromProxy,
}

#[derive(Debug)]
pub(super) enum Item {
    Data(Bytes),
    Fin,
    Reset,
}

#[derive(Debug, Default)]
struct Pipe {
    items: VecDeque<(Instant, Item)>,
    /// When the last item arrives (links are FIFO).
    last: Option<Instant>,
    tap: Tap,
    /// The sending side closed or the link broke: later writes vanish.
    shut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkKind {
    Client(u32),
    Upstream(u32),
}

#[derive(Debug)]
struct Link {
    kind: LinkKind,
    latency: Duration,
    to_proxy: Pipe,
    from_proxy: Pipe,
    /// Bytes were lost on it during a partition: it is reset when the partition heals.
    lost: bool,
}

impl Link {
    fn pipe(&mut self, dir: Dir) -> &mut Pipe {
        match dir {
            Dir::ToProxy => &mut self.to_proxy,
            Dir::FromProxy => &mut self.from_proxy,
        }
    }
}

/// Every link of the world, by number.
#[derive(Debug, Default)]
pub(super) struct Net {
    links: BTreeMap<u32, Link>,
    next: u32,
}

impl Net {
    /// A new link with both directions open; its number.
    pub(super) fn add(&mut self, kind: LinkKind, latency: Duration) -> u32 {
        self.next += 1;
        self.links.insert(
            self.next,
            Link {
                kind,
                latency,
                to_proxy: Pipe::default(),
                from_proxy: Pipe::default(),
                lost: false,
            },
        );
        self.next
    }

    /// What a link connects, if it still exists.
    pub(super) fn kind(&self, link: u32) -> Option<LinkKind> {
        self.links.get(&link).map(|l| l.kind)
    }

    /// Whether a link is a broker connection's.
    pub(super) fn is_upstream(&self, link: u32) -> bool {
        matches!(self.kind(link), Some(LinkKind::Upstream(_)))
    }

    /// What every link connects, in link order.
    pub(super) fn kinds(&self) -> impl Iterator<Item = LinkKind> + '_ {
        self.links.values().map(|l| l.kind)
    }

    /// Queues an item on a link; it arrives after the link's latency, in order. `cut`: the
    /// path to the broker is cut, so on a broker connection the item is lost (and the link
    /// marked lost). Returns when it arrives, if it is on its way.
    pub(super) fn push(
        &mut self,
        now: Instant,
        link: u32,
        dir: Dir,
        item: Item,
        cut: bool,
    ) -> Option<Instant> {
        let upstream = self.is_upstream(link);
        let l = self.links.get_mut(&link)?;
        if upstream && cut {
            l.lost = true;
            return None;
        }
        let latency = l.latency;
        let pipe = l.pipe(dir);
        if pipe.shut {
            return None;
        }
        if matches!(item, Item::Fin | Item::Reset) {
            pipe.shut = true;
        }
        let at = (now + latency).max(pipe.last.unwrap_or(now));
        pipe.last = Some(at);
        pipe.items.push_back((at, item));
        Some(at)
    }

    /// Takes what arrived by `now` in one direction: the bytes, and the FIN or reset that
    /// ends them (anything queued behind it is dropped). `None` if the link is gone.
    pub(super) fn take(
        &mut self,
        now: Instant,
        link: u32,
        dir: Dir,
    ) -> Option<(LinkKind, BytesMut, Option<Item>)> {
        let l = self.links.get_mut(&link)?;
        let kind = l.kind;
        let pipe = l.pipe(dir);
        let mut data = BytesMut::new();
        let mut end = None;
        while let Some((at, _)) = pipe.items.front() {
            if *at > now {
                break;
            }
            let (_, item) = pipe.items.pop_front().expect("present");
            match item {
                Item::Data(b) => data.extend_from_slice(&b),
                Item::Fin | Item::Reset => {
                    end = Some(item);
                    pipe.items.clear();
                    break;
                }
            }
        }
        Some((kind, data, end))
    }

    /// The trace lines for bytes taken off a link (frames, as the direction's tap splits them).
    pub(super) fn tap(&mut self, link: u32, dir: Dir, data: &[u8]) -> Vec<String> {
        let l = self.links.get_mut(&link).expect("present");
        l.pipe(dir).tap.feed(data)
    }

    /// Breaks a link: both directions lose what is in flight and carry a reset, which
    /// arrives after the latency (returned).
    pub(super) fn reset(&mut self, now: Instant, link: u32) -> Option<Instant> {
        let l = self.links.get_mut(&link)?;
        let latency = l.latency;
        for dir in [Dir::ToProxy, Dir::FromProxy] {
            let p = l.pipe(dir);
            p.items.clear();
            p.shut = true;
            p.last = Some(now + latency);
            p.items.push_back((now + latency, Item::Reset));
        }
        l.lost = false;
        Some(now + latency)
    }

    /// Forgets a link once both directions are shut and empty.
    pub(super) fn gc(&mut self, link: u32) {
        if let Some(l) = self.links.get(&link) {
            let done = |p: &Pipe| p.shut && p.items.is_empty();
            if done(&l.to_proxy) && done(&l.from_proxy) {
                self.links.remove(&link);
            }
        }
    }

    /// The broker connections' links.
    pub(super) fn upstream_links(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter(|(_, l)| matches!(l.kind, LinkKind::Upstream(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Links with both directions open.
    pub(super) fn live(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter(|(_, l)| !l.to_proxy.shut && !l.from_proxy.shut)
            .map(|(id, _)| *id)
            .collect()
    }

    /// What is on its way to the broker on `link` is lost (a crash or a silent death);
    /// `shut`: whatever is written after it vanishes too.
    pub(super) fn lose_to_broker(&mut self, link: u32, shut: bool) {
        if let Some(l) = self.links.get_mut(&link) {
            l.from_proxy.items.clear();
            if shut {
                l.from_proxy.shut = true;
            }
        }
    }

    /// A partition: the data in flight both ways is lost, and the link marked lost if any
    /// was. A reset or FIN already on its way stays: in reality the next write after the
    /// partition would draw an RST.
    pub(super) fn lose_data(&mut self, link: u32) {
        if let Some(l) = self.links.get_mut(&link) {
            for p in [&mut l.to_proxy, &mut l.from_proxy] {
                let before = p.items.len();
                p.items.retain(|(_, it)| !matches!(it, Item::Data(_)));
                if p.items.len() != before {
                    l.lost = true;
                }
            }
        }
    }

    /// Whether bytes were lost on a link during a partition.
    pub(super) fn is_lost(&self, link: u32) -> bool {
        self.links.get(&link).is_some_and(|l| l.lost)
    }

    /// How many items are on their way to warren on a link, and when the last arrives.
    pub(super) fn queued_to_proxy(&self, link: u32) -> Option<(usize, Option<Instant>)> {
        let p = &self.links.get(&link)?.to_proxy;
        Some((p.items.len(), p.items.back().map(|(at, _)| *at)))
    }
}
