//! Draws per second of the exact discrete Laplace and discrete Gaussian samplers, beside the `opendp`
//! crate's exact samplers, in one run and at the same parameters.
//!
//! Run: `cargo bench -p kwm-benches --bench sampler`
//!
//! - `kwm/os`: `OsNoise`, the production source (kernel bytes via `getrandom`, buffered).
//! - `kwm/seeded`: `SeededNoise`, the same sampler on a ChaCha20 stream.
//! - `opendp`: `opendp::traits::samplers::sample_discrete_laplace` and `sample_discrete_gaussian` (big
//!   rationals, dashu; the Gaussian one takes sigma, not sigma^2). Built without default features, as
//!   here, they take their bits from rand 0.7's `thread_rng` (ChaCha seeded from the OS) instead of
//!   OpenSSL.
//!
//! Criterion reports `thrpt` in elements per second: one element is one draw.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashu::integer::{IBig, UBig};
use dashu::rational::RBig;
use kwm_service::noise::{NoiseSource, OsNoise, Scale, SeededNoise, Variance};

const SCALES: [Scale; 5] = [
    Scale { num: 1, den: 2 },
    Scale { num: 1, den: 1 },
    Scale { num: 7, den: 3 },
    Scale { num: 10, den: 1 },
    Scale {
        num: 20_000,
        den: 1,
    },
];

/// Discrete Gaussian variances sigma^2, perfect squares so that opendp gets the same sigma exactly.
const VARIANCES: [Variance; 3] = [
    Variance { num: 4, den: 1 },
    Variance { num: 100, den: 1 },
    Variance {
        num: 10_000,
        den: 1,
    },
];

fn sampler(c: &mut Criterion) {
    for scale in SCALES {
        let label = format!("{}/{}", scale.num, scale.den);
        let mut group = c.benchmark_group(format!("discrete_laplace/{label}"));
        group.throughput(Throughput::Elements(1));

        let mut os = OsNoise::new();
        group.bench_function(BenchmarkId::new("kwm", "os"), |b| {
            b.iter(|| {
                os.try_discrete_laplace(black_box(scale))
                    .expect("the OS random source works")
            })
        });

        let mut seeded = SeededNoise::from_seed(2020);
        group.bench_function(BenchmarkId::new("kwm", "seeded"), |b| {
            b.iter(|| {
                seeded
                    .try_discrete_laplace(black_box(scale))
                    .expect("a valid scale")
            })
        });

        let rational = RBig::from_parts(IBig::from(scale.num), UBig::from(scale.den));
        group.bench_function(BenchmarkId::new("opendp", "thread_rng"), |b| {
            b.iter(|| {
                opendp::traits::samplers::sample_discrete_laplace(black_box(rational.clone()))
                    .expect("opendp draws succeed")
            })
        });

        group.finish();
    }

    for sigma2 in VARIANCES {
        let sigma = sigma2.num.isqrt();
        assert_eq!(
            (sigma * sigma, sigma2.den),
            (sigma2.num, 1),
            "a whole sigma"
        );
        let mut group = c.benchmark_group(format!("discrete_gaussian/{}", sigma2.num));
        group.throughput(Throughput::Elements(1));

        let mut os = OsNoise::new();
        group.bench_function(BenchmarkId::new("kwm", "os"), |b| {
            b.iter(|| {
                os.try_discrete_gaussian(black_box(sigma2))
                    .expect("the OS random source works")
            })
        });

        let mut seeded = SeededNoise::from_seed(2020);
        group.bench_function(BenchmarkId::new("kwm", "seeded"), |b| {
            b.iter(|| {
                seeded
                    .try_discrete_gaussian(black_box(sigma2))
                    .expect("a valid variance")
            })
        });

        let scale = RBig::from(UBig::from(sigma));
        group.bench_function(BenchmarkId::new("opendp", "thread_rng"), |b| {
            b.iter(|| {
                opendp::traits::samplers::sample_discrete_gaussian(black_box(scale.clone()))
                    .expect("opendp draws succeed")
            })
        });

        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sampler
}
criterion_main!(benches);
