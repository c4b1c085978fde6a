//! [`Alarm`]: how a recurring condition is logged (a backend refusing, DNS
//! failing, descriptors running out). One line when it starts, then while it
//! lasts at most one a minute with how often it recurred meanwhile, and one
//! when it is over; never one line per connection or per refresh.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The least time between two lines about the same condition.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// A condition that may recur many times a second; see the module doc.
#[derive(Debug, Default)]
pub struct Alarm {
    raised: AtomicBool,
    /// When the last line was due, and how often the condition recurred since.
    since: Mutex<Option<(Instant, u64)>>,
}

impl Alarm {
    pub const fn new() -> Alarm {
        Alarm {
            raised: AtomicBool::new(false),
            since: Mutex::new(None),
        }
    }

    /// The condition occurred. `Some(n)` when a line is due (it just started,
    /// or [`REPEAT_EVERY`] has passed), `n` being the occurrences not
    /// logged since the last line.
    pub fn raise(&self) -> Option<u64> {
        let now = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = !self.raised.swap(true, Relaxed);
        match &mut *since {
            Some((last, repeats)) if !fresh && now.duration_since(*last) < REPEAT_EVERY => {
                *repeats += 1;
                None
            }
            Some((last, repeats)) if !fresh => {
                let unlogged = std::mem::take(repeats);
                *last = now;
                Some(unlogged)
            }
            _ => {
                *since = Some((now, 0));
                Some(0)
            }
        }
    }

    /// The condition is over: true once, when it had been raised, so that
    /// the recovery is said once. Costs one load when nothing was raised.
    pub fn clear(&self) -> bool {
        self.raised.load(Relaxed) && self.raised.swap(false, Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_when_raised_then_one_a_minute_with_a_count() {
        let alarm = Alarm::new();
        assert!(!alarm.clear(), "nothing to clear yet");
        assert_eq!(alarm.raise(), Some(0));
        for _ in 0..998 {
            assert_eq!(alarm.raise(), None);
        }
        tokio::time::sleep(REPEAT_EVERY).await;
        assert_eq!(alarm.raise(), Some(998));
        assert_eq!(alarm.raise(), None);
        assert!(alarm.clear());
        assert!(!alarm.clear(), "the recovery is said once");
        assert_eq!(alarm.raise(), Some(0), "a new episode starts with a line");
    }
}
