//! What a task waits on besides its channels and sockets — abort and its earliest deadline —
//! made once for the task's life. A `select!` over freshly made futures would
//! register a new timer (and a new cancellation listener) at every wait; these are polled
//! again instead, and the one timer is moved only when the deadline changes.

use std::pin::Pin;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The long-lived futures of one task's wait.
pub(crate) struct Wake {
    /// Completes on the second signal: stop at once.
    pub(crate) abort: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires at [`Wake::at`]; only polled while that is set.
    pub(crate) sleep: Pin<Box<Sleep>>,
    /// The deadline the timer is set to, if any.
    pub(crate) at: Option<Instant>,
}

impl Wake {
    /// A future for the server's abort token, and an unset timer.
    pub(crate) fn new(abort: &CancellationToken) -> Wake {
        Wake {
            abort: Box::pin(abort.clone().cancelled_owned()),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            at: None,
        }
    }

    /// Points the timer at `deadline` (none: the timer is not polled).
    pub(crate) fn set(&mut self, deadline: Option<Instant>) {
        if deadline != self.at {
            if let Some(at) = deadline {
                self.sleep.as_mut().reset(at);
            }
            self.at = deadline;
        }
    }

    /// Whether the timer is set, so a `select!` branch may poll it.
    pub(crate) fn armed(&self) -> bool {
        self.at.is_some()
    }

    /// Called when the timer fired: it stays unset until the next [`Wake::set`].
    pub(crate) fn fired(&mut self) {
        self.at = None;
    }
}
