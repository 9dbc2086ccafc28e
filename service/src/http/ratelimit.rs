//! Per-token rate limit: a token bucket per token id, refilled continuously. In memory, so each replica
//! limits on its own; the limit protects the service, it is not a quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a request, so that refills need no floating point.
    milli_tokens: u64,
    last: Instant,
}

impl RateLimiter {
    /// `per_second` requests per second on average, `burst` at once. A zero rate switches the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the token's bucket, or says how long to wait.
    pub fn check(&self, token_id: i64) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let cap = u64::from(self.burst) * 1000;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > 100_000 {
            // Forget idle buckets rather than grow without bound.
            buckets.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(60));
        }
        let b = buckets.entry(token_id).or_insert(Bucket {
            milli_tokens: cap,
            last: now,
        });
        let elapsed_ms = now.duration_since(b.last).as_millis() as u64;
        b.milli_tokens = (b.milli_tokens + elapsed_ms * u64::from(self.per_second)).min(cap);
        b.last = now;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - b.milli_tokens;
            let wait_ms = missing.div_ceil(u64::from(self.per_second)).max(1);
            Err(Duration::from_millis(wait_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        // Ten a second: a token comes back every 100 ms, long beside four checks even on a busy
        // machine, so the bucket is still empty at the fourth.
        let rl = RateLimiter::new(10, 3);
        assert!(rl.check(1).is_ok());
        assert!(rl.check(1).is_ok());
        assert!(rl.check(1).is_ok());
        let wait = rl.check(1).expect_err("bucket empty");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another token has its own bucket.
        assert!(rl.check(2).is_ok());
        std::thread::sleep(wait + Duration::from_millis(20));
        assert!(rl.check(1).is_ok());
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let rl = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert!(rl.check(7).is_ok());
        }
    }
}
