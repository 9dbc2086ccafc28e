//! Exact samplers in integer arithmetic: uniform integers, rational Bernoulli, Bernoulli(exp(-gamma)),
//! discrete Laplace and discrete Gaussian, after Canonne, Kamath and Steinke 2020 (Algorithms 1, 2 and 3).
//! See the review note in [`super`] for the chain from the OS to a draw.
//!
//! All functions take any `R: CryptoRng` so that tests can run them on a seeded ChaCha stream; production
//! runs them on the OS CSPRNG through [`super::OsNoise`]. No function allocates or touches a float.

use rand::CryptoRng;

use super::{NoiseError, Scale, Variance};

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

/// Rounds of Algorithm 3. With t = floor(sigma) + 1 a round is kept with probability at least 0.28, so this
/// many rejections in a row have probability below 0.72^1024 < 2^-485.
///
/// The bound: Y has P(Y = y) = tanh(1/(2t)) exp(-|y|/t) and is kept with probability
/// exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)); the product of the two is
/// tanh(1/(2t)) exp(-sigma^2/(2t^2)) exp(-y^2/(2 sigma^2)), so a round is kept with probability
/// P = tanh(1/(2t)) exp(-sigma^2/(2t^2)) S, with S = sum over all integers y of exp(-y^2/(2 sigma^2)).
/// Since t > sigma, exp(-sigma^2/(2t^2)) > exp(-1/2) > 0.606. S >= 1 (the term y = 0), and
/// S >= sqrt(2 pi) sigma (Poisson summation: S = sqrt(2 pi) sigma (1 + 2 sum_k exp(-2 pi^2 sigma^2 k^2))).
/// tanh(x) / x decreases on x > 0 and 1/(2t) <= 1/2, so tanh(1/(2t)) >= 2 tanh(1/2) / (2t) > 0.462 / t.
/// - sigma < 1: t = 1 and P > 0.462 * 0.606 * 1 > 0.28.
/// - sigma >= 1: t <= sigma + 1 <= 2 sigma and P > (0.462 / t) * 0.606 * 2.506 sigma > 0.70 sigma / t >= 0.35.
///
/// (The test `gaussian_acceptance_bound_holds` evaluates P on a grid of variances.)
const MAX_GAUSSIAN_ROUNDS: u32 = 1024;

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

/// A uniform integer in `[0, n)` for a 128-bit `n`, exactly.
///
/// A range that fits 64 bits goes to [`uniform_below`] (one word per try). A wider range takes a 128-bit word
/// from two 64-bit words (high word first), keeps its low `bits(n - 1)` bits, and rejects the result if it is
/// not below `n`. The masked word is uniform on `[0, 2^k)` with 2^(k-1) < n <= 2^k, so a try is kept with
/// probability n / 2^k > 1/2, and `MAX_UNIFORM_RETRIES` (256) retries in a row have probability below 2^-256.
pub fn uniform_below_u128<R: CryptoRng + ?Sized>(rng: &mut R, n: u128) -> Result<u128, NoiseError> {
    if n == 0 {
        return Err(NoiseError::EmptyRange);
    }
    match u64::try_from(n) {
        Ok(n) => uniform_below(rng, n).map(u128::from),
        Err(_) => uniform_below_masked(rng, n),
    }
}

/// The masked rejection sampler of [`uniform_below_u128`], for any `n >= 1` (tested on small ranges, where
/// every masked word can be enumerated).
fn uniform_below_masked<R: CryptoRng + ?Sized>(rng: &mut R, n: u128) -> Result<u128, NoiseError> {
    if n == 0 {
        return Err(NoiseError::EmptyRange);
    }
    // All ones in the bit length of n - 1; zero for n = 1 (a shift by 128 would overflow).
    let mask = u128::MAX.checked_shr((n - 1).leading_zeros()).unwrap_or(0);
    for _ in 0..=MAX_UNIFORM_RETRIES {
        let high = u128::from(rng.next_u64());
        let low = u128::from(rng.next_u64());
        let word = ((high << 64) | low) & mask;
        if word < n {
            return Ok(word);
        }
    }
    Err(NoiseError::RetryLimit)
}

/// True with probability exactly `num / den`, for 128-bit parts. `0/den` and `den/den` are answered without
/// drawing.
#[inline]
pub fn bernoulli_rational_u128<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, NoiseError> {
    if den == 0 || num > den {
        return Err(NoiseError::InvalidProbability {
            num: saturate(num),
            den: saturate(den),
        });
    }
    if num == 0 {
        return Ok(false);
    }
    if num == den {
        return Ok(true);
    }
    Ok(uniform_below_u128(rng, den)? < num)
}

/// A 128-bit part for an error message, capped at `u64::MAX`.
fn saturate(part: u128) -> u64 {
    u64::try_from(part).unwrap_or(u64::MAX)
}

/// True with probability exactly exp(-num/den), for any `num >= 0` and `den` in `1..=2^121` (beyond that the
/// draw may fail with [`NoiseError::Overflow`]): [`bernoulli_exp_minus`] for 128-bit parts.
pub fn bernoulli_exp_minus_u128<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, NoiseError> {
    if den == 0 {
        return Err(NoiseError::InvalidProbability {
            num: saturate(num),
            den: saturate(den),
        });
    }
    bernoulli_exp_minus_split(rng, num / den, num % den, den)
}

/// True with probability exactly exp(-(whole + rem/den)), `rem < den`: a run of `whole` Bernoulli(exp(-1))
/// draws that must all succeed, then Algorithm 1 on the fraction. `whole` may be a saturated quotient: any
/// value of at least [`MAX_UNIT_RUN`] answers the same (false, or the retry limit after that many
/// successes, of probability below 2^-369).
fn bernoulli_exp_minus_split<R: CryptoRng + ?Sized>(
    rng: &mut R,
    whole: u128,
    rem: u128,
    den: u128,
) -> Result<bool, NoiseError> {
    let mut run = 0u128;
    while run < whole {
        if run >= u128::from(MAX_UNIT_RUN) {
            return Err(NoiseError::RetryLimit);
        }
        if !bernoulli_exp_minus_unit(rng, 1, 1)? {
            return Ok(false);
        }
        run += 1;
    }
    bernoulli_exp_minus_unit_u128(rng, rem, den)
}

/// CKS20 Algorithm 1 for 128-bit parts: true with probability exp(-num/den) for `num <= den` (checked by
/// [`bernoulli_rational_u128`] on the first term). `den * 64` must fit 128 bits.
#[inline]
fn bernoulli_exp_minus_unit_u128<R: CryptoRng + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, NoiseError> {
    let mut k = 1u128;
    loop {
        let den_k = den.checked_mul(k).ok_or(NoiseError::Overflow)?;
        if !bernoulli_rational_u128(rng, num, den_k)? {
            return Ok(k % 2 == 1);
        }
        k += 1;
        if k > u128::from(MAX_SERIES_TERM) {
            return Err(NoiseError::RetryLimit);
        }
    }
}

/// The 256-bit product `x * y` as (high, low) 128-bit words, from four 64-bit partial products.
fn mul_wide(x: u128, y: u128) -> (u128, u128) {
    const LOW: u128 = u64::MAX as u128;
    let (x1, x0) = (x >> 64, x & LOW);
    let (y1, y0) = (y >> 64, y & LOW);
    let p00 = x0 * y0;
    let p01 = x0 * y1;
    let p10 = x1 * y0;
    let p11 = x1 * y1;
    // The middle column: at most 3 (2^64 - 1) < 2^66 in a u128, no overflow.
    let middle = (p00 >> 64) + (p01 & LOW) + (p10 & LOW);
    let low = (middle << 64) | (p00 & LOW);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (middle >> 64);
    (high, low)
}

/// (quotient, remainder) of the 256-bit number `high * 2^128 + low` by `d`, for `1 <= d < 2^127`; the
/// quotient saturates at `u128::MAX`. Schoolbook binary long division over the low word: the running
/// remainder stays below `d < 2^127`, so shifting it left by one bit cannot overflow.
fn div_rem_wide(high: u128, low: u128, d: u128) -> Result<(u128, u128), NoiseError> {
    if d == 0 || d >= 1 << 127 {
        return Err(NoiseError::Overflow);
    }
    if high == 0 {
        return Ok((low / d, low % d));
    }
    let quotient_high = high / d;
    let mut rem = high % d;
    let mut quotient = 0u128;
    for bit in (0..128).rev() {
        rem = (rem << 1) | ((low >> bit) & 1);
        quotient <<= 1;
        if rem >= d {
            rem -= d;
            quotient |= 1;
        }
    }
    let quotient = if quotient_high == 0 {
        quotient
    } else {
        u128::MAX
    };
    Ok((quotient, rem))
}

/// Greatest common divisor (binary method); `gcd(0, b) = b`.
fn gcd_u128(mut a: u128, mut b: u128) -> u128 {
    if a == 0 {
        return b;
    }
    if b == 0 {
        return a;
    }
    let shift = (a | b).trailing_zeros();
    a >>= a.trailing_zeros();
    loop {
        b >>= b.trailing_zeros();
        if a > b {
            (a, b) = (b, a);
        }
        b -= a;
        if b == 0 {
            return a << shift;
        }
    }
}

/// One exact draw of discrete Gaussian noise, P(Z = z) proportional to exp(-z^2 / (2 sigma^2)) with
/// sigma^2 = `sigma2.num / sigma2.den`: CKS20 Algorithm 3.
///
/// t = floor(sigma) + 1, where floor(sigma) is the largest integer s with s^2 <= num/den, which is the
/// integer square root of floor(num/den). Each round draws Y from the discrete Laplace with scale t and keeps
/// it with probability exp(-gamma), gamma = (|Y| - sigma^2/t)^2 / (2 sigma^2)
/// = (|Y| den t - num)^2 / (2 num den t^2); see `MAX_GAUSSIAN_ROUNDS` for why a round is kept with
/// probability above 0.28.
///
/// Widths, with num, den <= 2^40 and t <= sigma + 1: the denominator 2 num den t^2 is at most
/// 2 (num^2 + 2 num sqrt(num den) + num den) <= 2^83, and gamma is reduced by its gcd, so Algorithm 1 runs
/// on denominators below 2^83 * 64 = 2^89. |Y| den t - num is below 2^63 * 2^61 = 2^124 in magnitude (den t
/// < 2^61), and its square is computed in 256 bits and divided exactly, so nothing overflows.
pub fn discrete_gaussian<R: CryptoRng + ?Sized>(
    rng: &mut R,
    sigma2: Variance,
) -> Result<i64, NoiseError> {
    let Variance { num, den } = sigma2.checked()?;
    let t = (num / den).isqrt() + 1;
    let scale = Scale { num: t, den: 1 };
    let (num, den, t) = (u128::from(num), u128::from(den), u128::from(t));
    let den_t = den * t;
    let gamma_den = 2 * num * den * t * t;
    for _ in 0..MAX_GAUSSIAN_ROUNDS {
        let y = discrete_laplace(rng, scale)?;
        let distance = (u128::from(y.unsigned_abs()) * den_t).abs_diff(num);
        let (high, low) = mul_wide(distance, distance);
        let (whole, rem) = div_rem_wide(high, low, gamma_den)?;
        // gcd(distance^2, gamma_den) = gcd(rem, gamma_den): this reduces the whole fraction.
        let g = gcd_u128(rem, gamma_den);
        if bernoulli_exp_minus_split(rng, whole, rem / g, gamma_den / g)? {
            return Ok(y);
        }
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
    use crate::noise::{gaussian_variance, pmf, variance};
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

    // ---------------------------------------------------------------------------------------------------
    // Discrete Gaussian and the 128-bit helpers.
    //
    // Thresholds here are set at a false-alarm probability of about 1e-6 per check: chi-square at its upper
    // 1e-6 point, moments and frequencies at 5 standard errors (two-sided 5.7e-7). With fixed seeds the
    // tests are deterministic; `discrete_gaussian_matches_pmf_mean_and_variance` also checks that the same
    // draws fail the test against a pmf whose sigma^2 is 10% off, so the test has the power to fail.

    /// Upper 1e-6 point of the standard normal distribution.
    const Z_1E6: f64 = 4.753_424_308_822_899;

    /// Upper 1e-6 critical value of chi-square with `df` degrees of freedom (Wilson-Hilferty, as above).
    fn chi_square_critical_1e6(df: usize) -> f64 {
        let df = df as f64;
        let c = 2.0 / (9.0 * df);
        df * (1.0 - c + Z_1E6 * c.sqrt()).powi(3)
    }

    /// The exact discrete Gaussian pmf with variance parameter `s2`, on `[-range, range]` with
    /// range = 40 sigma + 1: the mass beyond is below e^-800, zero in `f64`.
    struct GaussianPmf {
        range: i64,
        p: Vec<f64>,
    }

    impl GaussianPmf {
        fn new(s2: f64) -> Self {
            let range = (40.0 * s2.sqrt()).ceil() as i64 + 1;
            let weights: Vec<f64> = (-range..=range)
                .map(|x| (-((x * x) as f64) / (2.0 * s2)).exp())
                .collect();
            // Sum from the smallest terms up.
            let mut sorted = weights.clone();
            sorted.sort_by(f64::total_cmp);
            let total: f64 = sorted.iter().sum();
            Self {
                range,
                p: weights.into_iter().map(|w| w / total).collect(),
            }
        }

        fn at(&self, x: i64) -> f64 {
            if x.abs() > self.range {
                0.0
            } else {
                self.p[usize::try_from(x + self.range).expect("in range")]
            }
        }

        /// P(lo <= X <= hi).
        fn between(&self, lo: i64, hi: i64) -> f64 {
            (lo.max(-self.range)..=hi.min(self.range))
                .map(|x| self.at(x))
                .sum()
        }

        fn moment(&self, power: i32) -> f64 {
            (-self.range..=self.range)
                .map(|x| (x as f64).powi(power) * self.at(x))
                .sum()
        }
    }

    /// Chi-square of `draws` against `pmf`: one bin per integer from zero outwards while the bin and the
    /// tail beyond it both expect at least 5 draws, and the two tails as the outermost bins.
    fn gaussian_fit(pmf: &GaussianPmf, draws: &[i64]) -> Fit {
        let n = draws.len() as f64;
        let mut hi = 0;
        while n * pmf.at(hi + 1) >= 5.0 && n * pmf.between(hi + 2, i64::MAX) >= 5.0 {
            hi += 1;
        }
        // Bins: (-inf, -hi - 1], then each of -hi..=hi, then [hi + 1, inf). The pmf is symmetric.
        let mut bins = vec![(i64::MIN, -hi - 1)];
        bins.extend((-hi..=hi).map(|x| (x, x)));
        bins.push((hi + 1, i64::MAX));
        let mut observed = vec![0u64; bins.len()];
        for &x in draws {
            observed[bins.partition_point(|&(_, top)| top < x)] += 1;
        }
        let chi_square = bins
            .iter()
            .zip(&observed)
            .map(|(&(lo, top), &o)| {
                let e = n * pmf.between(lo, top);
                assert!(e >= 5.0, "bin {lo}..={top} expects {e}");
                (o as f64 - e).powi(2) / e
            })
            .sum();
        let df = bins.len() - 1;
        Fit {
            chi_square,
            df,
            critical: chi_square_critical_1e6(df),
        }
    }

    const VARIANCES: [Variance; 5] = [
        Variance { num: 1, den: 2 },
        Variance { num: 1, den: 1 },
        Variance { num: 9, den: 4 },
        Variance { num: 25, den: 1 },
        Variance { num: 400, den: 3 },
    ];

    const GAUSSIAN_DRAWS: usize = 200_000;

    #[test]
    fn discrete_gaussian_matches_pmf_mean_and_variance() {
        for (i, sigma2) in VARIANCES.into_iter().enumerate() {
            let mut rng = rng(0x6a55_0000 + i as u64);
            let draws: Vec<i64> = (0..GAUSSIAN_DRAWS)
                .map(|_| discrete_gaussian(&mut rng, sigma2).expect("seeded draws succeed"))
                .collect();
            let s2 = sigma2.num as f64 / sigma2.den as f64;
            let pmf = GaussianPmf::new(s2);

            let fit = gaussian_fit(&pmf, &draws);
            println!(
                "sigma^2 {}/{}: chi-square {:.2}, df {}, critical (alpha 1e-6) {:.2}",
                sigma2.num, sigma2.den, fit.chi_square, fit.df, fit.critical
            );
            assert!(
                fit.chi_square < fit.critical,
                "{sigma2:?}: chi-square {} >= {} (df {})",
                fit.chi_square,
                fit.critical,
                fit.df
            );
            // Power: the same draws against a sigma^2 10% too large fail clearly.
            let wrong = gaussian_fit(&GaussianPmf::new(1.1 * s2), &draws);
            println!(
                "  against sigma^2 * 1.1: chi-square {:.2}, critical {:.2}",
                wrong.chi_square, wrong.critical
            );
            assert!(
                wrong.chi_square > 3.0 * wrong.critical,
                "{sigma2:?}: a 10% wrong variance passes ({} vs {})",
                wrong.chi_square,
                wrong.critical
            );

            let n = GAUSSIAN_DRAWS as f64;
            let sum: i128 = draws.iter().map(|&x| i128::from(x)).sum();
            let sum_sq: i128 = draws.iter().map(|&x| i128::from(x) * i128::from(x)).sum();
            let mean = sum as f64 / n;
            let sample_var = (sum_sq as f64 - n * mean * mean) / (n - 1.0);
            let var = gaussian_variance(sigma2);
            let second = pmf.moment(2);
            assert!(
                (var - second).abs() < 1e-9 * var,
                "{sigma2:?}: {var} vs {second}"
            );
            let mean_se = (var / n).sqrt();
            let var_se = ((pmf.moment(4) - var * var) / n).sqrt();
            println!(
                "  mean {mean:.5} (se {mean_se:.5}), variance {sample_var:.5} vs {var:.5} (se {var_se:.5})"
            );
            assert!(mean.abs() < 5.0 * mean_se, "{sigma2:?}: mean {mean}");
            assert!(
                (sample_var - var).abs() < 5.0 * var_se,
                "{sigma2:?}: variance {sample_var} vs {var}"
            );

            // Symmetry: given a nonzero draw its sign is a fair coin, and so for each small magnitude.
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
                assert!(z.abs() < 5.0, "{sigma2:?}: sign of {magnitude:?}: z = {z}");
            }
        }
    }

    #[test]
    fn discrete_gaussian_at_extreme_variances() {
        let max = Variance::MAX_PART;
        // sigma = 2^20: the largest t (2^20 + 1) and the widest gamma denominator.
        let mut rng = rng(0x6a55_1000);
        let sigma2 = Variance { num: max, den: 1 };
        let draws: Vec<i64> = (0..2_000)
            .map(|_| discrete_gaussian(&mut rng, sigma2).expect("seeded draws succeed"))
            .collect();
        let s2 = max as f64;
        let sample_var = draws.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 2_000.0;
        // Relative standard error of the sample variance: sqrt(2 / 2000) < 3.2%.
        assert!((sample_var / s2 - 1.0).abs() < 0.16, "{sample_var}");
        assert!(draws.iter().all(|&x| (x as f64).abs() < 10.0 * s2.sqrt()));

        // sigma^2 = 2^-40: P(X != 0) is about 2 exp(-2^39).
        let tiny = Variance { num: 1, den: max };
        for _ in 0..2_000 {
            assert_eq!(discrete_gaussian(&mut rng, tiny).expect("seeded"), 0);
        }

        // Large coprime parts on either side of sigma = 1 (t = 1 and t = 2).
        for sigma2 in [
            Variance {
                num: max - 1,
                den: max,
            },
            Variance {
                num: max,
                den: max - 1,
            },
            Variance {
                num: max,
                den: max / 4 - 1,
            },
        ] {
            let draws: Vec<i64> = (0..20_000)
                .map(|_| discrete_gaussian(&mut rng, sigma2).expect("seeded draws succeed"))
                .collect();
            let var = gaussian_variance(sigma2);
            let pmf = GaussianPmf::new(sigma2.num as f64 / sigma2.den as f64);
            let n = draws.len() as f64;
            let sample_var = draws.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n;
            let var_se = ((pmf.moment(4) - var * var) / n).sqrt();
            assert!(
                (sample_var - var).abs() < 5.0 * var_se,
                "{sigma2:?}: {sample_var} vs {var}"
            );
        }
    }

    #[test]
    fn gaussian_acceptance_bound_holds() {
        // The probability that one round of Algorithm 3 keeps its Y (see MAX_GAUSSIAN_ROUNDS):
        // tanh(1/(2t)) exp(-sigma^2/(2t^2)) sum_y exp(-y^2/(2 sigma^2)), with t as the sampler computes it.
        let acceptance = |sigma2: Variance| {
            let t = ((sigma2.num / sigma2.den).isqrt() + 1) as f64;
            let s2 = sigma2.num as f64 / sigma2.den as f64;
            let pmf_total: f64 = {
                let range = (40.0 * s2.sqrt()).ceil() as i64 + 1;
                (-range..=range)
                    .map(|y| (-((y * y) as f64) / (2.0 * s2)).exp())
                    .sum()
            };
            (1.0 / (2.0 * t)).tanh() * (-s2 / (2.0 * t * t)).exp() * pmf_total
        };
        let mut worst = f64::MAX;
        let mut grid: Vec<Variance> = (1..=4096).map(|k| Variance { num: k, den: 64 }).collect();
        // Just below and at perfect squares, where t is largest and smallest relative to sigma.
        for s in 1..=200u64 {
            grid.push(Variance { num: s * s, den: 1 });
            grid.push(Variance {
                num: s * s * 1_000_000 - 1,
                den: 1_000_000,
            });
        }
        grid.push(Variance {
            num: 1,
            den: Variance::MAX_PART,
        });
        for sigma2 in grid {
            let p = acceptance(sigma2);
            worst = worst.min(p);
            assert!(p > 0.28, "{sigma2:?}: acceptance {p}");
        }
        println!("lowest acceptance on the grid: {worst:.4}");
        // 0.72^1024 < 2^-485.
        assert!(1024.0 * 0.72f64.log2() < -485.0);
    }

    /// A source that plays back a fixed list of words and panics when it runs out.
    struct Script(std::vec::IntoIter<u64>);

    impl Script {
        fn new(words: Vec<u64>) -> Self {
            Self(words.into_iter())
        }
        fn left(&self) -> usize {
            self.0.len()
        }
    }

    impl RngCore for Script {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0.next().expect("the script has enough words")
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.next_u64() as u8);
        }
    }

    impl CryptoRng for Script {}

    #[test]
    fn uniform_below_masked_is_exact_on_small_ranges() {
        // Every masked word in [0, 2^k) is tried once, with junk in the bits above the mask: the words
        // below n come out unchanged, each exactly once, and every other word is rejected (the sampler
        // moves on to the fallback pair). So each value of [0, n) has exactly one preimage of 2^k.
        for n in [1u128, 2, 3, 5, 6, 7, 8, 9, 100, 1000, 1024, 1025] {
            let bits = 128 - (n - 1).leading_zeros();
            let mut hits = vec![0u32; usize::try_from(n).expect("small")];
            for w in 0..(1u64 << bits) {
                let junk = 0x9e37_79b9_7f4a_7c15u64;
                let low = ((junk << bits.min(63)) & !((1u64 << bits) - 1)) | w;
                let mut script = Script::new(vec![junk, low, 0, 0]);
                let out = uniform_below_masked(&mut script, n).expect("accepts within two tries");
                if script.left() == 2 {
                    assert_eq!(out, u128::from(w), "n = {n}");
                    hits[usize::try_from(out).expect("small")] += 1;
                } else {
                    assert!(u128::from(w) >= n, "n = {n}: {w} rejected");
                    assert_eq!(out, 0);
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "n = {n}: {hits:?}");
            // More than half of the masked words are kept.
            assert!(2 * n > 1u128 << bits || n == 1);
        }
        assert!(matches!(
            uniform_below_masked(&mut rng(1), 0),
            Err(NoiseError::EmptyRange)
        ));
    }

    #[test]
    fn uniform_below_u128_is_uniform() {
        // Small ranges go to the 64-bit sampler, word for word.
        let (mut a, mut b) = (rng(17), rng(17));
        for n in [1u64, 2, 10, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert_eq!(
                    uniform_below_u128(&mut a, u128::from(n)).expect("valid"),
                    u128::from(uniform_below(&mut b, n).expect("valid"))
                );
            }
        }
        assert!(matches!(
            uniform_below_u128(&mut a, 0),
            Err(NoiseError::EmptyRange)
        ));

        // The masked path on small ranges, by chi-square.
        let mut rng = rng(19);
        for range in [6u128, 10] {
            let n = 120_000;
            let mut counts = vec![0u64; usize::try_from(range).expect("small")];
            for _ in 0..n {
                let u = uniform_below_masked(&mut rng, range).expect("valid");
                counts[usize::try_from(u).expect("small")] += 1;
            }
            let e = n as f64 / range as f64;
            let chi_square: f64 = counts.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
            let df = usize::try_from(range).expect("small") - 1;
            assert!(chi_square < chi_square_critical_1e6(df), "{chi_square}");
        }

        // Wide ranges: in range, and the thirds (by value) and the lowest bit balanced. 2^64 + 1 rejects
        // almost half the masked words; u128::MAX rejects almost none.
        for range in [(1u128 << 64) + 1, 3 << 64, (1 << 127) + 1, u128::MAX] {
            let n = 60_000;
            let mut thirds = [0u64; 3];
            let mut odd = 0u64;
            for _ in 0..n {
                let u = uniform_below_u128(&mut rng, range).expect("valid");
                assert!(u < range);
                thirds[usize::try_from(u / range.div_ceil(3)).expect("below 3")] += 1;
                odd += u64::from(u % 2 == 1);
            }
            let e = n as f64 / 3.0;
            let chi_square: f64 = thirds.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
            assert!(
                chi_square < chi_square_critical_1e6(2),
                "{range}: {chi_square}"
            );
            let z = (odd as f64 - n as f64 / 2.0) / (n as f64 / 4.0).sqrt();
            assert!(z.abs() < 5.0, "{range}: z = {z}");
        }
    }

    #[test]
    fn bernoulli_rational_u128_has_probability_num_over_den() {
        let mut rng = rng(23);
        assert!(!bernoulli_rational_u128(&mut rng, 0, 5).expect("valid"));
        assert!(bernoulli_rational_u128(&mut rng, 5, 5).expect("valid"));
        assert!(bernoulli_rational_u128(&mut rng, u128::MAX, u128::MAX).expect("valid"));
        assert!(bernoulli_rational_u128(&mut rng, 6, 5).is_err());
        assert!(bernoulli_rational_u128(&mut rng, 0, 0).is_err());
        assert!(bernoulli_rational_u128(&mut rng, u128::MAX, 1 << 100).is_err());
        for (num, den) in [
            (3u128, 7u128),
            (2 << 99, 3 << 99),
            ((1 << 90) + 1, (1 << 91) + 1),
        ] {
            let n = 200_000;
            let hits = (0..n)
                .filter(|_| bernoulli_rational_u128(&mut rng, num, den).expect("valid"))
                .count() as f64;
            let (n, p) = (n as f64, num as f64 / den as f64);
            let z = (hits - n * p) / (n * p * (1.0 - p)).sqrt();
            assert!(z.abs() < 5.0, "{num}/{den}: z = {z}");
        }
    }

    #[test]
    fn bernoulli_exp_minus_u128_has_probability_exp_minus_gamma() {
        let big = 1u128 << 90;
        let gammas = [
            (0, 1),
            (1, 3),
            (5, 2),
            (big + (big >> 2), big),
            (3 * big + 1, big),
            ((1 << 120) - 1, 1 << 119),
        ];
        for (i, (num, den)) in gammas.into_iter().enumerate() {
            let mut rng = rng(0xbe71 + i as u64);
            let n = 300_000;
            let hits = (0..n)
                .filter(|_| {
                    bernoulli_exp_minus_u128(&mut rng, num, den).expect("seeded draws succeed")
                })
                .count() as f64;
            let n = n as f64;
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
        assert!(bernoulli_exp_minus_u128(&mut rng(1), 1, 0).is_err());
        // A denominator too wide for Algorithm 1's den * k: an error, never a wrapped product.
        assert!(matches!(
            bernoulli_exp_minus_u128(&mut Stuck(0), 1, u128::MAX),
            Err(NoiseError::Overflow)
        ));
    }

    #[test]
    fn wide_arithmetic_is_exact() {
        // mul_wide against u128 where the product fits, and at the extremes.
        let mut rng = rng(29);
        for _ in 0..10_000 {
            let (x, y) = (u128::from(rng.next_u64()), u128::from(rng.next_u64()));
            assert_eq!(mul_wide(x, y), (0, x * y));
        }
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 127, 2), (1, 0));
        assert_eq!(mul_wide(1 << 100, 1 << 100), (1 << 72, 0));

        // div_rem_wide: q d + r reassembles the dividend, r < d; the quotient saturates.
        for _ in 0..10_000 {
            let a = (u128::from(rng.next_u64()) << 27) ^ u128::from(rng.next_u64());
            let d = (((u128::from(rng.next_u64()) << 19) | 1) >> (rng.next_u64() % 80)).max(1);
            let (high, low) = mul_wide(a, a);
            let (q, r) = div_rem_wide(high, low, d).expect("d < 2^127");
            assert!(r < d);
            let (qh, ql) = mul_wide(q, d);
            let (sum_low, carry) = ql.overflowing_add(r);
            if q == u128::MAX {
                // Saturated: the true quotient is at least 2^128, that is high >= d.
                assert!(high >= d, "{a}^2 / {d}");
            } else {
                assert_eq!(
                    (qh + u128::from(carry), sum_low),
                    (high, low),
                    "{a}^2 / {d}"
                );
            }
        }
        // 2^128 = 3 (2^128 - 1) / 3 + 1.
        assert_eq!(div_rem_wide(1, 0, 3).expect("valid"), (u128::MAX / 3, 1));
        assert_eq!(div_rem_wide(5, 7, 2).expect("valid"), (u128::MAX, 1));
        assert_eq!(div_rem_wide(0, 7, 2).expect("valid"), (3, 1));
        assert!(div_rem_wide(0, 7, 0).is_err());
        assert!(div_rem_wide(0, 7, 1 << 127).is_err());

        assert_eq!(gcd_u128(0, 0), 0);
        assert_eq!(gcd_u128(0, 9), 9);
        assert_eq!(gcd_u128(12, 0), 12);
        assert_eq!(gcd_u128(12, 18), 6);
        assert_eq!(gcd_u128(3 << 100, 9 << 90), 3 << 90);
        assert_eq!(gcd_u128((1 << 89) - 1, 1 << 88), 1);
    }

    #[test]
    fn broken_sources_stop_the_gaussian_sampler() {
        let mut variances = VARIANCES.to_vec();
        variances.extend([
            Variance {
                num: Variance::MAX_PART,
                den: 1,
            },
            Variance {
                num: 1,
                den: Variance::MAX_PART,
            },
        ]);
        for sigma2 in variances {
            // Stuck at zero: the Laplace draw inside the first round hits its retry bound.
            assert!(matches!(
                discrete_gaussian(&mut Stuck(0), sigma2),
                Err(NoiseError::RetryLimit)
            ));
            for word in [u64::MAX, 1 << 63, 0x5555_5555_5555_5555] {
                let _ = discrete_gaussian(&mut Stuck(word), sigma2);
            }
            let mut counter = Counter(0);
            for _ in 0..200 {
                let _ = discrete_gaussian(&mut counter, sigma2);
            }
        }
        // The 128-bit helpers stop too: all-ones words are never below 2^64 + 1, and a stuck-at-zero
        // source makes every term of Algorithm 1 succeed.
        assert!(matches!(
            uniform_below_u128(&mut Stuck(u64::MAX), (1 << 64) + 1),
            Err(NoiseError::RetryLimit)
        ));
        assert!(matches!(
            bernoulli_exp_minus_u128(&mut Stuck(0), 1 << 100, 3 << 99),
            Err(NoiseError::RetryLimit)
        ));
        assert!(matches!(
            bernoulli_exp_minus_u128(&mut Stuck(0), u128::MAX, 1),
            Err(NoiseError::RetryLimit)
        ));
    }
}
