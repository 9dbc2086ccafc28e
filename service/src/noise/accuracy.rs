//! What the noise looks like: its probability mass function, its variance and its 95% interval.
//!
//! These read only the public scale, never a value or a draw, so they may and do use `f64`. An exact
//! rational answer is not on offer: p = exp(-1/b) is transcendental for rational b. For discrete Laplace
//! with parameter b and p = exp(-1/b):
//!
//! - P(X = x) = (1 - p) / (1 + p) * p^|x|, and (1 - p) / (1 + p) = tanh(1 / (2b));
//! - Var X = 2p / (1 - p)^2 (and E X = 0);
//! - P(X > w) = p^(w+1) / (1 + p), so P(|X| <= w) = 1 - 2 p^(w+1) / (1 + p).

use super::Scale;

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

#[cfg(test)]
mod tests {
    use super::*;

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
