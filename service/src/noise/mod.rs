//! Exact noise for released values (DESIGN section 7). Being implemented: see the `NoiseSource` contract.

/// A noise scale as an exact positive rational `num / den` (the Laplace parameter b = sensitivity / epsilon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub num: u64,
    pub den: u64,
}

/// Where released values get their noise. Production draws from the OS CSPRNG; a test-only policy can
/// switch noise off to check figures by hand.
pub trait NoiseSource {
    /// One draw of discrete Laplace noise with parameter `scale`: P(x) proportional to exp(-|x| / scale).
    fn discrete_laplace(&mut self, scale: Scale) -> i64;
}

/// No noise at all: for known-answer tests only, never reachable from a release a user can request.
#[derive(Debug, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn discrete_laplace(&mut self, _scale: Scale) -> i64 {
        0
    }
}
