//! Wire and record types shared by the Kwaliteitsmonitor SDK and service: the record schema, the sealed
//! batch and its cryptography, receipts, problem documents, the criteria catalogue, region configs and
//! research answers.
//! Nothing here knows about HTTP or databases.

pub mod api;
pub mod codes;
pub mod criteria;
pub mod envelope;
pub mod extract;
pub mod problem;
pub mod record;
pub mod region;
pub mod release;
pub mod research;

pub use codes::{AgbCode, Bsn, Code, Month, MunicipalityCode, ParseError, Pseudonym, Role};
pub use record::{BatchPayload, ExportedRecord, WireRecord};
pub use region::RegionConfig;
pub use release::Period;

use schemars::generate::SchemaSettings;

/// The JSON Schema files checked in under `schemas/json/`, by file name. A test keeps them in sync.
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn schema<T: schemars::JsonSchema>() -> serde_json::Value {
        let generator = SchemaSettings::draft2020_12().into_generator();
        generator.into_root_schema_for::<T>().to_value()
    }
    vec![
        ("record.schema.json", schema::<record::WireRecord>()),
        (
            "exported-record.schema.json",
            schema::<record::ExportedRecord>(),
        ),
        (
            "batch-payload.schema.json",
            schema::<record::BatchPayload>(),
        ),
        (
            "sealed-batch.schema.json",
            schema::<envelope::SealedBatch>(),
        ),
        ("batch-receipt.schema.json", schema::<api::BatchReceipt>()),
        ("batch-list.schema.json", schema::<api::BatchList>()),
        ("keys.schema.json", schema::<api::KeysResponse>()),
        ("token-info.schema.json", schema::<api::TokenInfo>()),
        ("audit-page.schema.json", schema::<api::AuditPage>()),
        ("index-check.schema.json", schema::<api::IndexCheck>()),
        (
            "withdrawal-receipt.schema.json",
            schema::<api::WithdrawalReceipt>(),
        ),
        ("problem.schema.json", schema::<problem::Problem>()),
        ("extract-spec.schema.json", schema::<extract::ExtractSpec>()),
        (
            "extract-risk-report.schema.json",
            schema::<extract::RiskReport>(),
        ),
        ("region.schema.json", schema::<region::RegionConfig>()),
        ("criterion.schema.json", schema::<criteria::Criterion>()),
        ("release.schema.json", schema::<release::Release>()),
        ("release-list.schema.json", schema::<release::ReleaseList>()),
        (
            "provider-scores.schema.json",
            schema::<release::ProviderScores>(),
        ),
        (
            "research-answer.schema.json",
            schema::<research::ResearchAnswer>(),
        ),
        (
            "research-estimate.schema.json",
            schema::<research::QueryEstimate>(),
        ),
    ]
}
