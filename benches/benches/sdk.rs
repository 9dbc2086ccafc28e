//! SDK throughput: parse, validate, pseudonymise, coarsen and seal a 100,000-row export, the work `kwm
//! upload` does on the provider's machine before anything is sent (both passes over the file).
//! Target: at least 200,000 rows/s on one core.
//!
//! Run: `cargo bench -p kwm-benches --bench sdk`

use std::fs::File;
use std::io::BufWriter;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kwm_schemas::envelope::HpkeSecretKey;
use kwm_schemas::RegionConfig;
use kwm_sdk::batch::{seal_plaintext, BatchBuilder};
use kwm_sdk::prepare::{validate_file, PrepareContext, Records, RowOutcome};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use time::OffsetDateTime;

const ROWS: u64 = 100_000;

fn sdk(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("export.csv");
    let agb = kwm_sdk::synth::write_single_export(
        BufWriter::new(File::create(&path).expect("create export")),
        ROWS,
        42,
    )
    .expect("synthetic export");
    let keys = ProviderKeys::generate().expect("keys");
    let regional = RegionalKey::generate().expect("regional key");
    let region = RegionConfig::wbw();
    let ctx = PrepareContext::new(region.clone(), Pseudonymiser::new(&regional, &keys));
    let service_key = HpkeSecretKey::generate().public_key();
    let created = OffsetDateTime::now_utc();

    let mut group = c.benchmark_group("sdk");
    group.throughput(Throughput::Elements(ROWS));
    group.sample_size(10);
    group.bench_function("prepare_and_seal_100k_rows", |b| {
        b.iter(|| {
            let validation = validate_file(&path, &ctx, &mut |_| {}).expect("pass 1");
            assert_eq!(validation.valid, ROWS);
            let mut builder =
                BatchBuilder::new(10_000, region.ingest.max_batch_bytes).expect("builder");
            let mut sealed = 0u64;
            let mut seal = |plain: kwm_sdk::batch::PlainBatch| {
                let batch = seal_plaintext(
                    &plain.plaintext,
                    plain.record_count,
                    agb,
                    kwm_sdk::batch::new_batch_id(),
                    &service_key,
                    keys.signer(),
                    &regional.check_value(),
                    created,
                )
                .expect("sealed");
                sealed += u64::from(batch.header.record_count);
            };
            for item in Records::open(&path, &ctx, validation.duplicates).expect("pass 2") {
                if let RowOutcome::Record { record, .. } = item.expect("row") {
                    if let Some(plain) = builder.push(&record).expect("batch") {
                        seal(plain);
                    }
                }
            }
            if let Some(plain) = builder.finish() {
                seal(plain);
            }
            assert_eq!(sealed, ROWS);
        })
    });
    group.finish();
}

criterion_group!(benches, sdk);
criterion_main!(benches);
