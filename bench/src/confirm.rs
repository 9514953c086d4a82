//! Pipelined publisher confirms: a window of unconfirmed messages per publisher.
//!
//! amqprs reports confirms through a [`ChannelCallback`]. The publisher takes one permit of a
//! semaphore of `window` permits before each publish; the callback gives permits back as
//! `Basic.Ack`/`Basic.Nack` arrive (with `multiple` handled exactly). Waiting for every
//! outstanding confirm is taking all `window` permits back.

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::Channel;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// What the publisher and the callback share.
#[derive(Debug)]
pub struct ConfirmWindow {
    /// Free slots of the window.
    pub slots: Semaphore,
    /// Size of the window.
    pub window: u32,
    /// Messages confirmed with `Basic.Ack`.
    pub acked: AtomicU64,
    /// Messages refused with `Basic.Nack`.
    pub nacked: AtomicU64,
    /// Anything unexpected the broker said on this channel (close, cancel, return).
    pub broker_error: Mutex<Option<String>>,
}

impl ConfirmWindow {
    /// A window of `window` unconfirmed messages.
    #[must_use]
    pub fn new(window: usize) -> Arc<ConfirmWindow> {
        let window = u32::try_from(window.clamp(1, 1 << 20)).unwrap_or(1 << 20);
        Arc::new(ConfirmWindow {
            slots: Semaphore::new(window as usize),
            window,
            acked: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            broker_error: Mutex::new(None),
        })
    }

    /// Takes one slot (waits while `window` messages are unconfirmed).
    pub async fn reserve(&self) {
        if let Ok(p) = self.slots.acquire().await {
            p.forget();
        }
    }

    /// Takes one slot if one is free at once.
    pub fn try_reserve(&self) -> bool {
        self.slots.try_acquire().map(|p| p.forget()).is_ok()
    }

    /// Waits until every published message is confirmed.
    pub async fn drain(&self) {
        if let Ok(p) = self.slots.acquire_many(self.window).await {
            // Give them back so that a second drain also returns at once.
            drop(p);
        }
    }

    fn note_error(&self, what: String) {
        let mut e = self.broker_error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(what);
        }
    }
}

/// Tracks which delivery tags are confirmed, so `multiple` acks release exactly the messages
/// not confirmed before.
#[derive(Debug, Default)]
pub struct TagTracker {
    /// Every tag up to here is confirmed.
    upto: u64,
    /// Tags above `upto` confirmed one by one.
    singles: BTreeSet<u64>,
}

impl TagTracker {
    /// Records a confirm of `tag` (and, with `multiple`, of every tag below it); returns how
    /// many messages it newly confirms.
    pub fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        if multiple {
            let above = self.singles.split_off(&(tag + 1));
            let already = self.singles.len() as u64;
            self.singles = above;
            let newly = tag - self.upto - already;
            self.upto = tag;
            self.compact();
            newly
        } else if self.singles.insert(tag) {
            self.compact();
            1
        } else {
            0
        }
    }

    fn compact(&mut self) {
        while self.singles.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
    }
}

/// The amqprs callback of a confirming publisher.
pub struct ConfirmCallback {
    shared: Arc<ConfirmWindow>,
    tags: TagTracker,
}

impl ConfirmCallback {
    /// A callback feeding `shared`.
    #[must_use]
    pub fn new(shared: Arc<ConfirmWindow>) -> ConfirmCallback {
        ConfirmCallback {
            shared,
            tags: TagTracker::default(),
        }
    }

    fn release(&self, n: u64) {
        self.shared
            .slots
            .add_permits(usize::try_from(n).unwrap_or(usize::MAX));
    }
}

#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.shared
            .note_error(format!("broker closed the channel: {close}"));
        // Nothing more will be confirmed: unblock the publisher.
        self.release(u64::from(self.shared.window));
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &Channel,
        cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        self.shared
            .note_error(format!("broker cancelled a consumer: {cancel:?}"));
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let n = self.tags.confirm(ack.delivery_tag(), ack.mutiple());
        self.shared.acked.fetch_add(n, Ordering::Relaxed);
        self.release(n);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let n = self.tags.confirm(nack.delivery_tag(), nack.multiple());
        self.shared.nacked.fetch_add(n, Ordering::Relaxed);
        self.release(n);
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        self.shared
            .note_error(format!("broker returned a message: {ret}"));
    }
}

/// A channel callback that only records what the broker said (for channels without confirms).
pub struct WatchCallback {
    shared: Arc<ConfirmWindow>,
}

impl WatchCallback {
    /// A callback recording into `shared.broker_error`.
    #[must_use]
    pub fn new(shared: Arc<ConfirmWindow>) -> WatchCallback {
        WatchCallback { shared }
    }
}

#[async_trait]
impl ChannelCallback for WatchCallback {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.shared
            .note_error(format!("broker closed the channel: {close}"));
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &Channel,
        cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        self.shared
            .note_error(format!("broker cancelled a consumer: {cancel:?}"));
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}

    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        self.shared
            .note_error(format!("broker returned a message: {ret}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_acks_count_each_message_once() {
        let mut t = TagTracker::default();
        assert_eq!(t.confirm(1, false), 1);
        assert_eq!(t.confirm(3, false), 1);
        assert_eq!(t.confirm(5, true), 3); // 2, 4, 5
        assert_eq!(t.confirm(5, true), 0);
        assert_eq!(t.confirm(4, false), 0);
        assert_eq!(t.confirm(7, false), 1);
        assert_eq!(t.confirm(6, false), 1); // compacts to 7
        assert_eq!(t.upto, 7);
        assert!(t.singles.is_empty());
        assert_eq!(t.confirm(1000, true), 993);
    }

    #[tokio::test]
    async fn window_blocks_and_drains() {
        let w = ConfirmWindow::new(2);
        w.reserve().await;
        w.reserve().await;
        assert_eq!(w.slots.available_permits(), 0);
        w.slots.add_permits(2);
        w.drain().await;
        assert_eq!(w.slots.available_permits(), 2);
    }
}
