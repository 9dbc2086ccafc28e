//! The one clock of the use cases, injected: the service runs on [`SystemClock`]; a test sets the time
//! with [`FixedClock`] (round calendars, data deadlines, key rotation). A part: the pure core takes
//! its times as arguments and never reads a clock.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// Now, in UTC, to the microsecond: the precision every store keeps.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        to_micros(OffsetDateTime::now_utc())
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that stands where a test puts it.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    pub fn at(t: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self(Mutex::new(to_micros(t))))
    }

    pub fn set(&self, t: OffsetDateTime) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to_micros(t);
    }

    pub fn advance(&self, by: time::Duration) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_keep_microseconds_and_a_fixed_one_moves_only_when_told() {
        let t = SystemClock.now();
        assert_eq!(t.nanosecond() % 1000, 0);
        let start = time::macros::datetime!(2026-03-01 12:00:00.123456789 UTC);
        let fixed = FixedClock::at(start);
        assert_eq!(fixed.now().nanosecond(), 123_456_000);
        assert_eq!(fixed.now(), fixed.now());
        fixed.advance(time::Duration::days(1));
        assert_eq!(fixed.now().day(), 2);
    }
}
