//! Exact samplers in integer arithmetic: uniform integers, rational Bernoulli, Bernoulli(exp(-gamma)) and
//! discrete Laplace, after Canonne, Kamath and Steinke 2020 (Algorithms 1 and 2). See the review note in
//! [`super`] for the chain from the OS to a draw.
//!
//! All functions take any `R: CryptoRng` so that tests can run them on a seeded ChaCha stream; production
//! runs them on the OS CSPRNG through [`super::OsNoise`]. No function allocates or touches a float.

use rand::CryptoRng;

use super::{NoiseError, Scale};

/// Retries of the uniform sampler before the source is declared broken. A retry happens with probability
/// (2^64 mod n) / 2^64 < 1/2, so this many in a row have probability below 2^-256 (below 2^-2560 for the
/// ranges the Laplace sampler uses, n <= 2^54).
const MAX_UNIFORM_RETRIES: u32 = 256;

/// Largest k in Algorithm 1. Getting past it has probability gamma^64 / 64! <= 2^-295.
const MAX_SERIES_TERM: u64 = 64;

/// Most Bernoulli(exp(-1)) successes in a row (V in Algorithm 2, and the whole part of gamma):
/// probability exp(-256) < 2^-369.
const MAX_UNIT_RUN: u64 = 256;

/// Rounds of Algorithm 2. A round is kept with probability at least (1 - 1/e) / 2 > 0.316 (U is kept with
/// probability (1/t) sum exp(-u/t) >= 1 - 1/e, and at most half of the rest is a negative zero), so this
/// many rejections in a row have probability below 0.684^1024 < 2^-560.
const MAX_LAPLACE_ROUNDS: u32 = 1024;

/// A uniform integer in `[0, n)`, exactly, by Lemire's multiply-and-reject method (as in
/// `rand::distr::Uniform::sample`, but with a bounded number of retries).
#[inline]
pub fn uniform_below<R: CryptoRng + ?Sized>(rng: &mut R, n: u64) -> Result<u64, NoiseError> {
    if n == 0 {
        return Err(NoiseError::EmptyRange);
    }
    let mut product = u128::from(rng.next_u64()) * u128::from(n);
    // The low word decides rejection: accept iff it is at least 2^64 mod n, which is below n, so the
    // division is only needed in the rare case low < n.
    let mut low = product as u64;
    if low < n {
        let rejected = n.wrapping_neg() % n;
        let mut retries = 0;
        while low < rejected {
            retries += 1;
            if retries > MAX_UNIFORM_RETRIES {
                return Err(NoiseError::RetryLimit);
            }
            product = u128::from(rng.next_u64()) * u128::from(n);
            low = product as u64;
        }
    }
    Ok((product >> 64) as u64)
}

/// True with probability exactly `num / den`. `0/den` and `den/den` are answered without drawing.
#[inline]
pub fn bernoulli_rational<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u64,
    den: u64,
) -> Result<bool, NoiseError> {
    if den == 0 || num > den {
        return Err(NoiseError::InvalidProbability { num, den });
    }
    if num == 0 {
        return Ok(false);
    }
    if num == den {
        return Ok(true);
    }
    Ok(uniform_below(rng, den)? < num)
}

/// True with probability exactly exp(-num/den), for any `num >= 0`, `den >= 1` (products stay in range
/// for `den <= 2^58`; beyond that the draw may fail with [`NoiseError::Overflow`]).
///
/// The whole part of gamma is a run of Bernoulli(exp(-1)) draws that must all succeed (exp(-a-b) =
/// exp(-a) exp(-b)); the fraction goes to Algorithm 1.
pub fn bernoulli_exp_minus<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u64,
    den: u64,
) -> Result<bool, NoiseError> {
    if den == 0 {
        return Err(NoiseError::InvalidProbability { num, den });
    }
    let whole = num / den;
    for run in 0..whole {
        if run >= MAX_UNIT_RUN {
            return Err(NoiseError::RetryLimit);
        }
        if !bernoulli_exp_minus_unit(rng, 1, 1)? {
            return Ok(false);
        }
    }
    bernoulli_exp_minus_unit(rng, num % den, den)
}

/// CKS20 Algorithm 1: true with probability exp(-gamma) for gamma = num/den in [0, 1] (`num <= den`,
/// checked by the callers).
///
/// Draw A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first failure at K; return "K is odd".
/// P(K > k) = gamma^k / k!, so P(K odd) = sum_k (-gamma)^k / k! = exp(-gamma).
#[inline]
fn bernoulli_exp_minus_unit<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u64,
    den: u64,
) -> Result<bool, NoiseError> {
    let mut k = 1u64;
    loop {
        let den_k = den.checked_mul(k).ok_or(NoiseError::Overflow)?;
        if !bernoulli_rational(rng, num, den_k)? {
            return Ok(k % 2 == 1);
        }
        k += 1;
        if k > MAX_SERIES_TERM {
            return Err(NoiseError::RetryLimit);
        }
    }
}

/// One exact draw of discrete Laplace noise, P(Z = z) = (1 - p) / (1 + p) p^|z| with p = exp(-1/b) and
/// b = `scale.num / scale.den`: CKS20 Algorithm 2 with t = `scale.num`, s = `scale.den`.
///
/// X = U + tV is Geometric(1 - exp(-1/t)) (U uniform in [0, t) kept with probability exp(-U/t), V
/// Geometric(1 - exp(-1))), so Y = floor(X / s) is Geometric(1 - exp(-s/t)); a fair sign with negative
/// zero rejected turns Y into the two-sided distribution.
pub fn discrete_laplace<R: CryptoRng + ?Sized>(
    rng: &mut R,
    scale: Scale,
) -> Result<i64, NoiseError> {
    let Scale { num: t, den: s } = scale.checked()?;
    for _ in 0..MAX_LAPLACE_ROUNDS {
        let u = if t == 1 { 0 } else { uniform_below(rng, t)? };
        if !bernoulli_exp_minus_unit(rng, u, t)? {
            continue;
        }
        let mut v = 0u64;
        while bernoulli_exp_minus_unit(rng, 1, 1)? {
            v += 1;
            if v >= MAX_UNIT_RUN {
                return Err(NoiseError::RetryLimit);
            }
        }
        // t <= 2^48 and v < 2^8 keep X below 2^57: no overflow, and Y fits an i64.
        let y = (u + t * v) / s;
        let negative = rng.next_u64() >> 63 == 1;
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).map_err(|_| NoiseError::Overflow)?;
        return Ok(if negative { -y } else { y });
    }
    Err(NoiseError::RetryLimit)
}

#[cfg(test)]
mod tests {
    //! Distribution tests on a seeded ChaCha20 stream: deterministic, so they cannot flake. Every bound is
    //! wide enough (alpha = 0.001 for chi-square, 5 standard errors elsewhere) that a correct sampler
    //! passes for almost every seed, and narrow enough that an off-by-one in the algorithm fails.
    //!
    //! The `f64` below is the statistics of the tests (expected frequencies, chi-square, moments),
    //! computed from the public scale: the sampler itself, above, uses integers only.

    use super::*;
    use crate::noise::{pmf, variance};
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    const DRAWS: usize = 1_000_000;

    /// Upper 0.001 point of the standard normal distribution.
    const Z_999: f64 = 3.090_232_306_167_813;

    /// Upper alpha = 0.001 critical value of chi-square with `df` degrees of freedom by the
    /// Wilson-Hilferty approximation, (chi2/df)^(1/3) ~ Normal(1 - 2/(9 df), 2/(9 df)), which is accurate
    /// to well under 1% of the value for df >= 3.
    fn chi_square_critical_999(df: usize) -> f64 {
        let df = df as f64;
        let c = 2.0 / (9.0 * df);
        df * (1.0 - c + Z_999 * c.sqrt()).powi(3)
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn p_of(scale: Scale) -> f64 {
        (-(scale.den as f64) / scale.num as f64).exp()
    }

    /// P(X <= x) for discrete Laplace.
    fn cdf(scale: Scale, x: i64) -> f64 {
        let p = p_of(scale);
        if x >= 0 {
            1.0 - p.powf(x as f64 + 1.0) / (1.0 + p)
        } else {
            p.powf(-x as f64) / (1.0 + p)
        }
    }

    /// E X^4 = 2p (1 + 11p + 11p^2 + p^3) / ((1 + p)(1 - p)^4), from sum x^4 p^x.
    fn fourth_moment(scale: Scale) -> f64 {
        let p = p_of(scale);
        let q = -(-(scale.den as f64) / scale.num as f64).exp_m1();
        2.0 * p * (1.0 + 11.0 * p + 11.0 * p * p + p * p * p) / ((1.0 + p) * q.powi(4))
    }

    /// Bins of whole integers around zero, `width` wide, extended on each side while a bin and the tail
    /// beyond it both expect at least 5 draws; the tails are the outermost bins.
    fn bins(scale: Scale, n: usize) -> Vec<(i64, i64)> {
        let n = n as f64;
        let width =
            i64::try_from((scale.num / scale.den / 4).max(1)).expect("test scales are small");
        let expected = |lo: i64, hi: i64| n * (cdf(scale, hi) - cdf(scale, lo - 1));
        let mut upper = Vec::new();
        let mut lo = 0;
        while expected(lo, lo + width - 1) >= 5.0 && n * (1.0 - cdf(scale, lo + width - 1)) >= 5.0 {
            upper.push((lo, lo + width - 1));
            lo += width;
        }
        upper.push((lo, i64::MAX));
        let mut lower = Vec::new();
        let mut hi = -1;
        while expected(hi - width + 1, hi) >= 5.0 && n * cdf(scale, hi - width) >= 5.0 {
            lower.push((hi - width + 1, hi));
            hi -= width;
        }
        lower.push((i64::MIN, hi));
        lower.reverse();
        lower.extend(upper);
        lower
    }

    struct Fit {
        chi_square: f64,
        df: usize,
        critical: f64,
    }

    fn goodness_of_fit(scale: Scale, draws: &[i64]) -> Fit {
        let bins = bins(scale, draws.len());
        let mut observed = vec![0u64; bins.len()];
        for &x in draws {
            let bin = bins.partition_point(|&(_, hi)| hi < x);
            observed[bin] += 1;
        }
        let n = draws.len() as f64;
        let chi_square = bins
            .iter()
            .zip(&observed)
            .map(|(&(lo, hi), &o)| {
                let below = if lo == i64::MIN {
                    0.0
                } else {
                    cdf(scale, lo - 1)
                };
                let upto = if hi == i64::MAX { 1.0 } else { cdf(scale, hi) };
                let e = n * (upto - below);
                assert!(e >= 5.0, "{scale:?}: bin {lo}..={hi} expects {e}");
                (o as f64 - e).powi(2) / e
            })
            .sum();
        let df = bins.len() - 1;
        Fit {
            chi_square,
            df,
            critical: chi_square_critical_999(df),
        }
    }

    const SCALES: [Scale; 7] = [
        Scale { num: 1, den: 4 },
        Scale { num: 1, den: 2 },
        Scale { num: 1, den: 1 },
        Scale { num: 7, den: 3 },
        Scale { num: 3, den: 1 },
        Scale { num: 10, den: 1 },
        Scale {
            num: 1_000_000_000,
            den: 7,
        },
    ];

    #[test]
    fn discrete_laplace_matches_pmf_mean_and_variance() {
        for (i, scale) in SCALES.into_iter().enumerate() {
            let mut rng = rng(0x4b57_0000 + i as u64);
            let draws: Vec<i64> = (0..DRAWS)
                .map(|_| discrete_laplace(&mut rng, scale).expect("seeded draws succeed"))
                .collect();

            let fit = goodness_of_fit(scale, &draws);
            println!(
                "scale {}/{}: chi-square {:.2}, df {}, critical (alpha 0.001) {:.2}",
                scale.num, scale.den, fit.chi_square, fit.df, fit.critical
            );
            assert!(
                fit.chi_square < fit.critical,
                "{scale:?}: chi-square {} >= {} (df {})",
                fit.chi_square,
                fit.critical,
                fit.df
            );

            let n = DRAWS as f64;
            let sum: i128 = draws.iter().map(|&x| i128::from(x)).sum();
            let sum_sq: i128 = draws.iter().map(|&x| i128::from(x) * i128::from(x)).sum();
            let mean = sum as f64 / n;
            let sample_var = (sum_sq as f64 - n * mean * mean) / (n - 1.0);
            let var = variance(scale);
            let mean_se = (var / n).sqrt();
            let var_se = ((fourth_moment(scale) - var * var) / n).sqrt();
            println!(
                "  mean {mean:.5} (se {mean_se:.5}), variance {sample_var:.5} vs {var:.5} (se {var_se:.5})"
            );
            assert!(mean.abs() < 5.0 * mean_se, "{scale:?}: mean {mean}");
            assert!(
                (sample_var - var).abs() < 5.0 * var_se,
                "{scale:?}: variance {sample_var} vs {var}"
            );

            // Symmetry: given a nonzero draw, its sign is a fair coin, and so is the sign of each small
            // magnitude separately.
            for magnitude in [None, Some(1), Some(2), Some(3)] {
                let matches = |x: i64| match magnitude {
                    None => x != 0,
                    Some(m) => x.abs() == m,
                };
                let both = draws.iter().filter(|&&x| matches(x)).count() as f64;
                if both < 100.0 {
                    continue;
                }
                let positive = draws.iter().filter(|&&x| x > 0 && matches(x)).count() as f64;
                let z = (positive - both / 2.0) / (both / 4.0).sqrt();
                assert!(z.abs() < 5.0, "{scale:?}: sign of {magnitude:?}: z = {z}");
            }
        }
    }

    #[test]
    fn small_scales_put_mass_where_the_pmf_does() {
        // A direct check of the first few probabilities, independent of the binning above.
        let scale = Scale { num: 1, den: 2 };
        let mut rng = rng(7);
        let draws: Vec<i64> = (0..200_000)
            .map(|_| discrete_laplace(&mut rng, scale).expect("seeded draws succeed"))
            .collect();
        for x in -2..=2 {
            let p = pmf(scale, x);
            let count = draws.iter().filter(|&&d| d == x).count() as f64;
            let n = draws.len() as f64;
            let z = (count - n * p) / (n * p * (1.0 - p)).sqrt();
            assert!(z.abs() < 5.0, "P(X = {x}): z = {z}");
        }
    }

    #[test]
    fn bernoulli_exp_minus_has_probability_exp_minus_gamma() {
        let gammas = [
            (0, 1),
            (1, 3),
            (1, 1),
            (3, 2),
            (5, 2),
            (7, 1),
            (1_000_000_001, 1_000_000_000),
        ];
        for (i, (num, den)) in gammas.into_iter().enumerate() {
            let mut rng = rng(0xbe70 + i as u64);
            let n = DRAWS as f64;
            let hits = (0..DRAWS)
                .filter(|_| bernoulli_exp_minus(&mut rng, num, den).expect("seeded draws succeed"))
                .count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            if num == 0 {
                assert_eq!(hits, n);
                continue;
            }
            let z = (hits - n * p) / (n * p * (1.0 - p)).sqrt();
            println!(
                "gamma {num}/{den}: frequency {:.6} vs exp(-gamma) {p:.6}, z = {z:.2}",
                hits / n
            );
            assert!(z.abs() < 5.0, "gamma {num}/{den}: z = {z}");
        }
    }

    #[test]
    fn bernoulli_rational_has_probability_num_over_den() {
        let mut rng = rng(11);
        assert!(!bernoulli_rational(&mut rng, 0, 5).expect("valid"));
        assert!(bernoulli_rational(&mut rng, 5, 5).expect("valid"));
        assert!(bernoulli_rational(&mut rng, 6, 5).is_err());
        assert!(bernoulli_rational(&mut rng, 0, 0).is_err());
        let n = 200_000;
        let hits = (0..n)
            .filter(|_| bernoulli_rational(&mut rng, 3, 7).expect("valid"))
            .count() as f64;
        let (n, p) = (n as f64, 3.0 / 7.0);
        let z = (hits - n * p) / (n * p * (1.0 - p)).sqrt();
        assert!(z.abs() < 5.0, "z = {z}");
    }

    #[test]
    fn uniform_below_is_uniform() {
        let mut rng = rng(13);
        assert!(matches!(
            uniform_below(&mut rng, 0),
            Err(NoiseError::EmptyRange)
        ));
        assert_eq!(uniform_below(&mut rng, 1).expect("valid"), 0);

        let (n, range) = (200_000, 10u64);
        let mut counts = [0u64; 10];
        for _ in 0..n {
            let u = uniform_below(&mut rng, range).expect("valid");
            counts[usize::try_from(u).expect("below 10")] += 1;
        }
        let e = n as f64 / range as f64;
        let chi_square: f64 = counts.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
        assert!(chi_square < chi_square_critical_999(9), "{chi_square}");

        // A range where almost half of all 64-bit words are rejected: still in range and balanced.
        let big = (1u64 << 63) + 1;
        let n = 100_000;
        let low_half = (0..n)
            .map(|_| uniform_below(&mut rng, big).expect("valid"))
            .inspect(|&u| assert!(u < big))
            .filter(|&u| u < big / 2)
            .count() as f64;
        let z = (low_half - n as f64 / 2.0) / (n as f64 / 4.0).sqrt();
        assert!(z.abs() < 5.0, "z = {z}");
    }

    /// A source that returns the same word for ever.
    struct Stuck(u64);

    impl RngCore for Stuck {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    impl CryptoRng for Stuck {}

    /// A source that counts up: every word differs, nothing is random.
    struct Counter(u64);

    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.next_u64() as u8);
        }
    }

    impl CryptoRng for Counter {}

    #[test]
    fn broken_sources_end_in_a_result_not_a_hang() {
        for scale in SCALES {
            // Stuck at zero, every uniform draw that can reject does, and every Bernoulli succeeds:
            // the retry bounds turn that into an error.
            assert!(matches!(
                discrete_laplace(&mut Stuck(0), scale),
                Err(NoiseError::RetryLimit)
            ));
            // Other broken sources: any result will do, as long as the call returns.
            for word in [u64::MAX, 1 << 63, 0x5555_5555_5555_5555] {
                let _ = discrete_laplace(&mut Stuck(word), scale);
            }
            let mut counter = Counter(0);
            for _ in 0..1_000 {
                let _ = discrete_laplace(&mut counter, scale);
            }
        }
        assert!(bernoulli_exp_minus(&mut Stuck(0), 1_000_000, 1).is_err());
        assert!(uniform_below(&mut Stuck(0), 3).is_err());
    }
}
