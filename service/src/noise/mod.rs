//! Exact noise for released values (DESIGN section 7): discrete Laplace and discrete Gaussian noise drawn
//! with integer arithmetic from the OS CSPRNG, and the 95% interval that goes with the Laplace noise.
//! Pure core: it knows no store, no clock and no HTTP.
//!
//! # Review note: where every random bit comes from
//!
//! A released value is `true value + Z`, where `Z` is an `i64` drawn by [`sampler::discrete_laplace`] (or,
//! for Gaussian noise, by [`sampler::discrete_gaussian`]). From the kernel to `Z`, in order:
//!
//! 1. **OS CSPRNG.** [`OsNoise`] owns a 4 KiB buffer filled by `rand::rngs::OsRng::try_fill_bytes`, that is
//!    `getrandom(2)` on Linux. No userspace generator stretches these bytes: every bit used is a kernel bit.
//!    Each byte is zeroed as it is handed out and the whole buffer on drop (`zeroize`), because a consumed
//!    byte would let a reader of process memory recompute the noise of a figure already released, and so its
//!    true value. If the OS call fails the buffer reads as zeros, the bounded loops below end, and
//!    [`NoiseSource::try_discrete_laplace`] reports [`NoiseError::Entropy`] instead of the draw.
//! 2. **Uniform integers.** [`sampler::uniform_below`] turns 64-bit words (`RngCore::next_u64`) into an
//!    exactly uniform integer in `[0, n)` by Lemire's multiply-and-reject method: the high word of
//!    `word * n` is kept unless the low word falls in the `2^64 mod n` rejected values, in which case a fresh
//!    word is drawn. This is the method of `rand::distr::Uniform::sample`. It does not use `Rng::random_range`,
//!    which in rand 0.9 uses Canon's method and, without rand's `unbiased` feature, is biased (by up to
//!    2^-64 per draw): not exact.
//! 3. **Bernoulli with a rational probability** `a / b`: one uniform integer `u < b`, true iff `u < a`
//!    ([`sampler::bernoulli_rational`]); `a = 0` and `a = b` are answered without drawing.
//! 4. **Bernoulli(exp(-gamma)) for rational gamma in [0, 1]**: Canonne, Kamath and Steinke 2020
//!    ("The Discrete Gaussian for Differential Privacy"), Algorithm 1: draw Bernoulli(gamma / k) for
//!    k = 1, 2, ... until one fails; true iff the failing k is odd ([`sampler::bernoulli_exp_minus`], which
//!    also takes gamma > 1 by chaining Bernoulli(exp(-1)) draws).
//! 5. **Discrete Laplace with scale t/s** (here `t = scale.num`, `s = scale.den`): CKS20 Algorithm 2.
//!    U uniform in `[0, t)` (2), kept with Bernoulli(exp(-U/t)) (4), else the round restarts; V counts the
//!    successes of Bernoulli(exp(-1)) (4) before the first failure; `Y = floor((U + t V) / s)`; the sign is
//!    the top bit of one fresh 64-bit word, a Bernoulli(1/2); a negative zero is rejected and the round
//!    restarts, so that zero is not drawn twice as often as it should be.
//! 6. **Discrete Gaussian with variance parameter sigma^2 = n/d** ([`Variance`]): CKS20 Algorithm 3.
//!    t = floor(sigma) + 1 is computed exactly as one plus the integer square root of floor(n/d). Each round
//!    draws Y from the discrete Laplace with scale t (5) and keeps it with probability
//!    exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)), an exact rational exponent
//!    gamma = (|Y| d t - n)^2 / (2 n d t^2) reduced by its gcd; otherwise the round restarts (a round is
//!    kept with probability above 0.28, so 1024 rounds bound the loop). The denominator of gamma stays
//!    below 2^84, but the square in its numerator can pass 2^128 on a far tail draw of Y, so the square is
//!    formed in 256 bits and split into a whole part and a remainder by exact 256-by-128-bit long division;
//!    the gcd is taken of the remainder and the denominator. The Bernoulli(exp(-gamma)) draw (4) runs on
//!    `u128` with its own uniform sampler ([`sampler::uniform_below_u128`]: Lemire's method (2) when the
//!    range fits 64 bits, otherwise a 128-bit word from two 64-bit words, masked to the bit length of the
//!    range and rejected if out of range) and rational Bernoulli ([`sampler::bernoulli_rational_u128`]).
//!    The kept Y is the draw: its density is proportional to exp(-Y^2 / (2 sigma^2)).
//!
//! # Why there is no floating point
//!
//! Every quantity between the OS bytes and `Z` is a `u64`, a `u128` (the product in step 2, the exponent
//! and the uniform draws of step 6), a pair of `u128` words (the square in step 6) or a `bool`. The scale
//! and the variance enter only as the integers `num` and `den`; exp(-gamma) is never evaluated, it is
//! realised as the probability of an event built from rational Bernoulli draws. So there is no rounding, and
//! none of the floating-point attacks on Laplace noise (Mironov 2012) applies. The only floating point in
//! this module is in [`accuracy`] ([`interval_95`], [`pmf`], [`variance`], [`gaussian_variance`]), which
//! reads the public scale or variance, never a value.
//!
//! # Termination
//!
//! Every loop is bounded. A bound is reached only on an outcome of probability below 2^-256 for a working
//! generator (see the constants in [`sampler`]); the draw then fails with [`NoiseError::RetryLimit`] instead
//! of returning a biased value, so a broken generator (for instance one stuck at zero) gives an error, not a
//! hang. Conditioning on the bounds not being reached moves the distribution by less than 2^-256 in total
//! variation, well below the security of the generator itself.

pub mod accuracy;
mod entropy;
pub mod sampler;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub use accuracy::{gaussian_variance, interval_95, pmf, variance};

use entropy::OsEntropy;

/// A noise scale as an exact positive rational `num / den` (the Laplace parameter b = sensitivity / epsilon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub num: u64,
    pub den: u64,
}

impl Scale {
    /// Largest numerator or denominator a sampler accepts: keeps every intermediate product below 2^64.
    pub const MAX_PART: u64 = 1 << 48;

    /// A scale `num / den`, both in `1..=Scale::MAX_PART`.
    pub fn new(num: u64, den: u64) -> Result<Self, NoiseError> {
        Scale { num, den }.checked()
    }

    /// This scale if both parts are in `1..=Scale::MAX_PART`.
    pub fn checked(self) -> Result<Self, NoiseError> {
        let in_range = |part: u64| (1..=Self::MAX_PART).contains(&part);
        if in_range(self.num) && in_range(self.den) {
            Ok(self)
        } else {
            Err(NoiseError::InvalidScale {
                num: self.num,
                den: self.den,
            })
        }
    }
}

/// The variance parameter sigma^2 of discrete Gaussian noise as an exact positive rational `num / den`:
/// P(x) is proportional to exp(-x^2 / (2 sigma^2)). (The variance of the draws themselves is slightly below
/// sigma^2; see [`gaussian_variance`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variance {
    pub num: u64,
    pub den: u64,
}

impl Variance {
    /// Largest numerator or denominator the Gaussian sampler accepts. With both parts at most 2^40,
    /// sigma <= 2^20, and every intermediate of the sampler fits the widths it uses (see
    /// [`sampler::discrete_gaussian`]).
    pub const MAX_PART: u64 = 1 << 40;

    /// A variance `num / den`, both in `1..=Variance::MAX_PART`, reduced to lowest terms.
    pub fn new(num: u64, den: u64) -> Result<Self, NoiseError> {
        Variance { num, den }.checked()
    }

    /// This variance in lowest terms if both parts are in `1..=Variance::MAX_PART`.
    pub fn checked(self) -> Result<Self, NoiseError> {
        let in_range = |part: u64| (1..=Self::MAX_PART).contains(&part);
        if in_range(self.num) && in_range(self.den) {
            let g = gcd(self.num, self.den);
            Ok(Variance {
                num: self.num / g,
                den: self.den / g,
            })
        } else {
            Err(NoiseError::InvalidVariance {
                num: self.num,
                den: self.den,
            })
        }
    }
}

/// Greatest common divisor by Euclid's algorithm; `gcd(0, b) = b`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Why a draw of noise failed. No variant carries a partial or biased draw: on error nothing is released.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error(
        "invalid noise scale {num}/{den}: numerator and denominator must be between 1 and 2^48"
    )]
    InvalidScale { num: u64, den: u64 },
    #[error(
        "invalid noise variance {num}/{den}: numerator and denominator must be between 1 and 2^40"
    )]
    InvalidVariance { num: u64, den: u64 },
    #[error("invalid probability {num}/{den}: need 0 <= num <= den and den >= 1")]
    InvalidProbability { num: u64, den: u64 },
    #[error("a uniform integer was asked for in the empty range [0, 0)")]
    EmptyRange,
    #[error("a sampler product overflowed its integer width")]
    Overflow,
    #[error("the random source produced an outcome of probability below 2^-256; it is treated as broken")]
    RetryLimit,
    #[error("the operating system's random source failed")]
    Entropy(#[source] rand::rand_core::OsError),
}

/// Where released values get their noise. Production draws from the OS CSPRNG; a test-only policy can
/// switch noise off to check figures by hand.
pub trait NoiseSource {
    /// One draw of discrete Laplace noise with parameter `scale`: P(x) proportional to exp(-|x| / scale).
    fn discrete_laplace(&mut self, scale: Scale) -> i64;

    /// As [`NoiseSource::discrete_laplace`], but an invalid scale or a failing random source is an error
    /// instead of a panic. Release code should call this one.
    fn try_discrete_laplace(&mut self, scale: Scale) -> Result<i64, NoiseError> {
        Ok(self.discrete_laplace(scale))
    }

    /// One draw of discrete Gaussian noise with variance parameter `sigma2`: P(x) proportional to
    /// exp(-x^2 / (2 sigma2)). An invalid variance or a failing random source is an error.
    fn try_discrete_gaussian(&mut self, sigma2: Variance) -> Result<i64, NoiseError>;
}

/// No noise at all: for known-answer tests only, never reachable from a release a user can request.
#[derive(Debug, Default)]
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn discrete_laplace(&mut self, _scale: Scale) -> i64 {
        0
    }

    fn try_discrete_gaussian(&mut self, _sigma2: Variance) -> Result<i64, NoiseError> {
        Ok(0)
    }
}

/// Production noise: exact discrete Laplace draws from the operating system's CSPRNG (see the module note).
#[derive(Debug, Default)]
pub struct OsNoise {
    entropy: OsEntropy,
}

impl OsNoise {
    pub fn new() -> Self {
        Self::default()
    }
}

impl NoiseSource for OsNoise {
    /// Panics if the scale is invalid or the OS random source fails; use `try_discrete_laplace` to handle
    /// those as errors.
    fn discrete_laplace(&mut self, scale: Scale) -> i64 {
        match self.try_discrete_laplace(scale) {
            Ok(noise) => noise,
            Err(error) => panic!("no noise could be drawn, nothing may be released: {error}"),
        }
    }

    fn try_discrete_laplace(&mut self, scale: Scale) -> Result<i64, NoiseError> {
        let draw = sampler::discrete_laplace(&mut self.entropy, scale);
        // A draw made while the OS source was failing consumed zeros: discard it whatever it is.
        if let Some(error) = self.entropy.take_error() {
            return Err(NoiseError::Entropy(error));
        }
        draw
    }

    fn try_discrete_gaussian(&mut self, sigma2: Variance) -> Result<i64, NoiseError> {
        let draw = sampler::discrete_gaussian(&mut self.entropy, sigma2);
        // As for Laplace: a draw that consumed bytes of a failed OS call is discarded whatever it is.
        if let Some(error) = self.entropy.take_error() {
            return Err(NoiseError::Entropy(error));
        }
        draw
    }
}

/// Reproducible noise from a seeded ChaCha20 stream, with the same exact sampler: for tests and
/// simulations only. Anyone who knows the seed knows the noise, so it must never feed a real release.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha20Rng,
}

impl SeededNoise {
    pub fn from_seed(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    /// Panics only on an invalid scale (a seeded stream cannot fail).
    fn discrete_laplace(&mut self, scale: Scale) -> i64 {
        match self.try_discrete_laplace(scale) {
            Ok(noise) => noise,
            Err(error) => panic!("no noise could be drawn: {error}"),
        }
    }

    fn try_discrete_laplace(&mut self, scale: Scale) -> Result<i64, NoiseError> {
        sampler::discrete_laplace(&mut self.rng, scale)
    }

    fn try_discrete_gaussian(&mut self, sigma2: Variance) -> Result<i64, NoiseError> {
        sampler::discrete_gaussian(&mut self.rng, sigma2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bounds() {
        assert!(Scale::new(1, 1).is_ok());
        assert!(Scale::new(Scale::MAX_PART, Scale::MAX_PART).is_ok());
        for (num, den) in [(0, 1), (1, 0), (Scale::MAX_PART + 1, 1), (1, u64::MAX)] {
            assert!(matches!(
                Scale::new(num, den),
                Err(NoiseError::InvalidScale { .. })
            ));
        }
        let mut noise = SeededNoise::from_seed(1);
        assert!(noise
            .try_discrete_laplace(Scale { num: 0, den: 1 })
            .is_err());
    }

    #[test]
    fn variance_bounds_and_reduction() {
        assert_eq!(
            Variance::new(1, 1).expect("valid"),
            Variance { num: 1, den: 1 }
        );
        assert_eq!(
            Variance::new(Variance::MAX_PART, Variance::MAX_PART).expect("valid"),
            Variance { num: 1, den: 1 }
        );
        assert_eq!(
            Variance::new(800, 6).expect("valid"),
            Variance { num: 400, den: 3 }
        );
        assert_eq!(
            Variance::new(Variance::MAX_PART, 3).expect("valid"),
            Variance {
                num: Variance::MAX_PART,
                den: 3
            }
        );
        for (num, den) in [
            (0, 1),
            (1, 0),
            (0, 0),
            (Variance::MAX_PART + 1, 1),
            (1, Variance::MAX_PART + 1),
            (u64::MAX, u64::MAX),
        ] {
            assert!(
                matches!(
                    Variance::new(num, den),
                    Err(NoiseError::InvalidVariance { num: n, den: d }) if n == num && d == den
                ),
                "{num}/{den}"
            );
        }
        // A variance built field by field is checked when it is used.
        let mut seeded = SeededNoise::from_seed(1);
        let mut os = OsNoise::new();
        for bad in [
            Variance { num: 0, den: 1 },
            Variance { num: 1, den: 0 },
            Variance {
                num: Variance::MAX_PART + 1,
                den: 1,
            },
        ] {
            assert!(matches!(
                seeded.try_discrete_gaussian(bad),
                Err(NoiseError::InvalidVariance { .. })
            ));
            assert!(matches!(
                os.try_discrete_gaussian(bad),
                Err(NoiseError::InvalidVariance { .. })
            ));
        }
    }

    #[test]
    fn seeded_gaussian_is_reproducible() {
        let sigma2 = Variance { num: 9, den: 4 };
        let draws = |seed| {
            let mut noise = SeededNoise::from_seed(seed);
            (0..64)
                .map(|_| noise.try_discrete_gaussian(sigma2).expect("valid"))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
    }

    #[test]
    fn os_noise_gaussian_draws_spread_values() {
        // Wiring only, as for Laplace above: 10,000 equal draws at sigma^2 = 9 have probability below
        // 10^-1000, and a draw beyond 1,000 = 333 sigma has probability below 10^-24000.
        let mut noise = OsNoise::new();
        let sigma2 = Variance { num: 9, den: 1 };
        let draws = (0..10_000)
            .map(|_| noise.try_discrete_gaussian(sigma2))
            .collect::<Result<Vec<_>, _>>()
            .expect("the OS random source works on the test machine");
        assert!(draws.iter().any(|&x| x > 0));
        assert!(draws.iter().any(|&x| x < 0));
        assert!(draws.contains(&0));
        assert!(draws.iter().all(|&x| x.abs() < 1_000));
    }

    #[test]
    fn seeded_noise_is_reproducible() {
        let scale = Scale { num: 7, den: 3 };
        let draws = |seed| {
            let mut noise = SeededNoise::from_seed(seed);
            (0..64)
                .map(|_| noise.discrete_laplace(scale))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
    }

    #[test]
    fn os_noise_draws_spread_values() {
        // Not a distribution test (that runs on the seeded stream in `sampler`): this checks that the OS
        // path is wired up. The chance that 10,000 draws at scale 3 are all equal is below 10^-1000.
        let mut noise = OsNoise::new();
        let scale = Scale { num: 3, den: 1 };
        let draws = (0..10_000)
            .map(|_| noise.try_discrete_laplace(scale))
            .collect::<Result<Vec<_>, _>>()
            .expect("the OS random source works on the test machine");
        assert!(draws.iter().any(|&x| x > 0));
        assert!(draws.iter().any(|&x| x < 0));
        assert!(draws.contains(&0));
        assert!(draws.iter().all(|&x| x.abs() < 1_000));
    }

    #[test]
    fn no_noise_is_zero() {
        assert_eq!(NoNoise.discrete_laplace(Scale { num: 5, den: 1 }), 0);
        assert_eq!(
            NoNoise
                .try_discrete_laplace(Scale { num: 5, den: 1 })
                .expect("NoNoise cannot fail"),
            0
        );
        assert_eq!(
            NoNoise
                .try_discrete_gaussian(Variance { num: 25, den: 1 })
                .expect("NoNoise cannot fail"),
            0
        );
    }
}
