//! Kernel random bytes for [`super::OsNoise`]: a buffered view of `OsRng` that zeroes what it hands out.

use rand::rand_core::OsError;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore, TryRngCore};
use zeroize::Zeroize;

/// Bytes fetched per OS call. One discrete Laplace draw uses about ten 64-bit words, so one `getrandom`
/// call serves some fifty draws instead of one call per word.
const BUFFER_BYTES: usize = 4096;

/// Bytes straight from the OS CSPRNG, served in order; every byte is zeroed once served and the rest on drop.
pub(super) struct OsEntropy {
    buf: Box<[u8; BUFFER_BYTES]>,
    /// Next unserved byte; `BUFFER_BYTES` when empty.
    pos: usize,
    /// The first OS failure since the last `take_error`. While set, served bytes are zeros.
    error: Option<OsError>,
}

impl Default for OsEntropy {
    fn default() -> Self {
        Self {
            buf: Box::new([0; BUFFER_BYTES]),
            pos: BUFFER_BYTES,
            error: None,
        }
    }
}

impl std::fmt::Debug for OsEntropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsEntropy")
            .field("buffered_bytes", &(BUFFER_BYTES - self.pos))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Drop for OsEntropy {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl OsEntropy {
    /// The OS failure seen since the last call, if any. Draws made meanwhile consumed zeros.
    pub(super) fn take_error(&mut self) -> Option<OsError> {
        self.error.take()
    }

    fn refill(&mut self) {
        if let Err(error) = OsRng.try_fill_bytes(&mut self.buf[..]) {
            self.buf.zeroize();
            self.error.get_or_insert(error);
        }
        self.pos = 0;
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        if BUFFER_BYTES - self.pos < N {
            // The few bytes left over are zeroed already or about to be overwritten.
            self.buf[self.pos..].zeroize();
            self.refill();
        }
        let mut out = [0; N];
        let served = &mut self.buf[self.pos..self.pos + N];
        out.copy_from_slice(served);
        served.zeroize();
        self.pos += N;
        out
    }
}

impl RngCore for OsEntropy {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for byte in dst {
            let [b] = self.take();
            *byte = b;
        }
    }
}

/// Every byte comes from the OS CSPRNG unchanged.
impl CryptoRng for OsEntropy {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_fresh_bytes_and_zeroes_them() {
        let mut entropy = OsEntropy::default();
        let words: Vec<u64> = (0..2 * BUFFER_BYTES / 8 + 3)
            .map(|_| entropy.next_u64())
            .collect();
        assert!(entropy.take_error().is_none());
        // Across two refills no word repeats (probability of a repeat among ~1000 words: below 2^-44).
        let mut sorted = words.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), words.len());
        // Everything already served is zero in the buffer.
        assert!(entropy.buf[..entropy.pos].iter().all(|&b| b == 0));
    }
}
