//! What the noise looks like: its probability mass function, its variance and its 95% interval.
//!
//! These read only the public scale, never a value or a draw, so they may and do use `f64`. An exact
//! rational answer is not on offer: p = exp(-1/b) is transcendental for rational b. For discrete Laplace
//! with parameter b and p = exp(-1/b):
//!
//! - P(X = x) = (1 - p) / (1 + p) * p^|x|, and (1 - p) / (1 + p) = tanh(1 / (2b));
//! - Var X = 2p / (1 - p)^2 (and E X = 0);
//! - P(X > w) = p^(w+1) / (1 + p), so P(|X| <= w) = 1 - 2 p^(w+1) / (1 + p).
//!
//! For the discrete Gaussian with variance parameter sigma^2, P(X = x) = exp(-x^2 / (2 sigma^2)) / S with
//! S = sum over all integers y of exp(-y^2 / (2 sigma^2)); its variance has no closed form and is summed
//! ([`gaussian_variance`]).

use std::f64::consts::PI;

use super::{Scale, Variance};

/// Up to this sigma^2 the discrete Gaussian variance is summed term by term; above it by the dual series,
/// which then has no term that survives in `f64`.
const GAUSSIAN_DIRECT_LIMIT: f64 = 256.0;

/// 1 / b = den / num.
fn inverse(scale: Scale) -> f64 {
    scale.den as f64 / scale.num as f64
}

/// P(X = x) for discrete Laplace with parameter `scale`.
pub fn pmf(scale: Scale, x: i64) -> f64 {
    let q = inverse(scale);
    (q / 2.0).tanh() * (-q * x.unsigned_abs() as f64).exp()
}

/// Var X = 2p / (1 - p)^2 with p = exp(-1/b); `1 - p` is computed as `-expm1(-1/b)` so that large scales
/// keep their precision.
pub fn variance(scale: Scale) -> f64 {
    let q = inverse(scale);
    let one_minus_p = -(-q).exp_m1();
    2.0 * (-q).exp() / (one_minus_p * one_minus_p)
}

/// The smallest integer w with P(|X| <= w) >= 0.95 for discrete Laplace with parameter `scale`: a published
/// value v carries the interval [v - w, v + w].
///
/// From P(|X| <= w) = 1 - 2 p^(w+1) / (1 + p), the condition is (w + 1) / b >= ln 40 - ln(1 + p), so
/// w = ceil(b (ln 40 - ln(1 + p))) - 1. Floating point is acceptable here because only the public scale
/// goes in. Exact equality cannot occur (it would make exp(1/num) algebraic); a near tie could move w by
/// one, with the true coverage then within about 1e-12 of 95%.
pub fn interval_95(scale: Scale) -> u64 {
    let b = scale.num as f64 / scale.den as f64;
    let p = (-1.0 / b).exp();
    let needed = b * (40f64.ln() - p.ln_1p());
    // `needed` is positive and at most about 3.7 * 2^48 for valid scales, so the cast cannot saturate.
    (needed.ceil() as u64).saturating_sub(1)
}

/// The variance of the discrete Gaussian with variance parameter `sigma2`, E X^2 (E X = 0). It is below
/// sigma^2: by about 14% at sigma^2 = 1/4, by about 2e-7 relative at sigma^2 = 1, and by nothing an `f64`
/// can show from sigma^2 = 4 on.
///
/// Up to sigma^2 = 256 the series sum x^2 exp(-x^2 / (2 sigma^2)) / sum exp(-x^2 / (2 sigma^2)) is summed
/// out to |x| = 40 sigma, where the terms are below e^-800 and underflow. Beyond, the Poisson dual of the same
/// sums (S = sqrt(2 pi) sigma theta, theta = 1 + 2 sum_k exp(-2 pi^2 sigma^2 k^2)) gives
/// E X^2 = sigma^3 S'/S = sigma^2 - 8 pi^2 sigma^4 sum_k k^2 exp(-2 pi^2 sigma^2 k^2) / theta, summed over
/// k >= 1 until a term underflows: this avoids a million terms at large sigma and equals sigma^2 in `f64`.
pub fn gaussian_variance(sigma2: Variance) -> f64 {
    let s2 = sigma2.num as f64 / sigma2.den as f64;
    if s2 <= GAUSSIAN_DIRECT_LIMIT {
        gaussian_variance_direct(s2)
    } else {
        gaussian_variance_dual(s2)
    }
}

fn gaussian_variance_direct(s2: f64) -> f64 {
    let range = (40.0 * s2.sqrt()).ceil() as i64 + 1;
    let (mut mass, mut second) = (1.0, 0.0);
    for x in 1..=range {
        let x = x as f64;
        let w = (-x * x / (2.0 * s2)).exp();
        mass += 2.0 * w;
        second += 2.0 * x * x * w;
    }
    second / mass
}

fn gaussian_variance_dual(s2: f64) -> f64 {
    let (mut theta, mut weighted) = (1.0, 0.0);
    let mut k = 1.0;
    loop {
        let w = (-2.0 * PI * PI * s2 * k * k).exp();
        if w == 0.0 {
            break;
        }
        theta += 2.0 * w;
        weighted += k * k * w;
        k += 1.0;
    }
    s2 - 8.0 * PI * PI * s2 * s2 * weighted / theta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_variance_is_below_sigma2_and_the_two_series_agree() {
        // Direct summation against the dual series where both converge well.
        for s2 in [0.5, 1.0, 2.25, 4.0, 25.0, 133.0, 256.0] {
            let direct = gaussian_variance_direct(s2);
            let dual = gaussian_variance_dual(s2);
            assert!(
                (direct - dual).abs() < 1e-12 * s2,
                "{s2}: {direct} vs {dual}"
            );
        }
        // Small sigma^2: X is almost always 0 or +-1, and Var = 2 e^(-1/(2 s2)) / (1 + 2 e^(-1/(2 s2)))
        // up to the x = +-2 terms (below 1e-30 here).
        let s2: f64 = 1.0 / 64.0;
        let w = (-1.0 / (2.0 * s2)).exp();
        let expected = 2.0 * w / (1.0 + 2.0 * w);
        let got = gaussian_variance(Variance { num: 1, den: 64 });
        assert!(
            (got - expected).abs() < 1e-12 * expected,
            "{got} vs {expected}"
        );

        let checks = [
            (Variance { num: 1, den: 4 }, 0.25),
            (Variance { num: 1, den: 2 }, 0.5),
            (Variance { num: 1, den: 1 }, 1.0),
        ];
        for (sigma2, s2) in checks {
            let var = gaussian_variance(sigma2);
            assert!(var < s2, "{sigma2:?}: {var}");
        }
        // The deficit at sigma^2 = 1 is 8 pi^2 e^(-2 pi^2) / (1 + 2 e^(-2 pi^2)), about 2.1e-7.
        let deficit = 1.0 - gaussian_variance(Variance { num: 1, den: 1 });
        let e = (-2.0 * PI * PI).exp();
        let expected = 8.0 * PI * PI * e / (1.0 + 2.0 * e);
        assert!((deficit - expected).abs() < 1e-3 * expected, "{deficit}");
        // Large sigma^2: sigma^2 itself.
        for (num, den) in [(10_000, 1), (1 << 40, 1), (400, 3)] {
            let s2 = num as f64 / den as f64;
            let var = gaussian_variance(Variance { num, den });
            assert!((var - s2).abs() <= 1e-12 * s2, "{num}/{den}: {var}");
        }
    }

    const SCALES: [Scale; 8] = [
        Scale { num: 1, den: 4 },
        Scale { num: 1, den: 2 },
        Scale { num: 1, den: 1 },
        Scale { num: 7, den: 3 },
        Scale { num: 3, den: 1 },
        Scale { num: 10, den: 1 },
        Scale { num: 250, den: 1 },
        Scale {
            num: 1_000_000_000,
            den: 7,
        },
    ];

    /// P(|X| <= w) summed term by term from the pmf, not from the closed form used by `interval_95`.
    fn coverage(scale: Scale, w: u64) -> f64 {
        let w = i64::try_from(w).expect("test widths are small");
        (-w..=w).map(|x| pmf(scale, x)).sum()
    }

    #[test]
    fn interval_95_is_the_smallest_width_covering_95_percent() {
        for scale in SCALES.into_iter().take(7) {
            let w = interval_95(scale);
            assert!(coverage(scale, w) >= 0.95, "{scale:?}: w = {w}");
            if w > 0 {
                assert!(coverage(scale, w - 1) < 0.95, "{scale:?}: w = {w}");
            }
        }
        // Very small scales: all mass at zero.
        assert_eq!(interval_95(Scale { num: 1, den: 4 }), 0);
        assert_eq!(interval_95(Scale { num: 1, den: 1 }), 3);
    }

    #[test]
    fn interval_95_at_large_scale_matches_the_closed_form() {
        // Summing 10^9 terms is too slow; check the tail formula at w and w - 1 instead.
        let scale = SCALES[7];
        // Exponents from 1/b directly: ln(p) of a p this close to 1 would lose the digits that matter.
        let q = scale.den as f64 / scale.num as f64;
        let p = (-q).exp();
        let w = interval_95(scale) as f64;
        assert!(2.0 * (-q * (w + 1.0)).exp() / (1.0 + p) <= 0.05);
        assert!(2.0 * (-q * w).exp() / (1.0 + p) > 0.05);
    }

    #[test]
    fn pmf_sums_to_one_and_variance_matches_second_moment() {
        for scale in SCALES.into_iter().take(6) {
            let range = 2_000 * scale.num.div_ceil(scale.den) as i64;
            let total: f64 = (-range..=range).map(|x| pmf(scale, x)).sum();
            let second: f64 = (-range..=range)
                .map(|x| (x * x) as f64 * pmf(scale, x))
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "{scale:?}: {total}");
            let var = variance(scale);
            assert!((second - var).abs() < 1e-9 * var.max(1.0), "{scale:?}");
        }
    }
}
