//! What a provider can do with the records the service holds for it: withdraw a batch or a trajectory
//! (`kwm withdraw`) and export them as CSV (`kwm export`). A trajectory is named by the provider's own
//! trajectory number and pseudonymised here, exactly as an upload does; the number never leaves.

use std::io::Write;

use kwm_schemas::api::WithdrawalReceipt;
use kwm_schemas::{ExportedRecord, Pseudonym};

use crate::client::{Client, ClientError};
use crate::keys::ProviderKeys;

/// The columns of `kwm export`, in the order of the record schema.
/// There is no client column: the service never hands out a client pseudonym (see
/// [`kwm_schemas::ExportedRecord`]).
pub const EXPORT_COLUMNS: [&str; 17] = [
    "trajectory",
    "municipality",
    "target_group",
    "intensity",
    "product_category",
    "start_month",
    "end_month",
    "age_band",
    "end_reason",
    "satisfaction",
    "respondent",
    "carry_on_without_help",
    "problem_t_pre",
    "problem_t_post",
    "instrument",
    "goals_agreed",
    "goals_achieved",
];

/// The trajectory pseudonym of one of the provider's trajectory numbers: the same checks and the same
/// HMAC as an upload. An empty, too long or control-character id is refused with the reason.
pub fn trajectory_pseudonym(keys: &ProviderKeys, trajectory_id: &str) -> Result<Pseudonym, String> {
    let id = crate::fields::trajectory_id(trajectory_id.as_bytes())
        .map_err(|reason| format!("trajectory id: {reason}"))?;
    Ok(crate::pseudonym::trajectory_pseudonym(
        keys.trajectory_key(),
        id,
    ))
}

/// What to withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    Batch(uuid::Uuid),
    /// The provider's own trajectory number, as in its export.
    Trajectory(String),
}

/// A failed withdrawal or export.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// The input given is not valid (exit code 2).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Withdraws a batch, or a trajectory named by its number (pseudonymised with `keys` first).
pub async fn withdraw(
    client: &Client,
    what: &Withdrawal,
    keys: Option<&ProviderKeys>,
) -> Result<WithdrawalReceipt, CustodyError> {
    match what {
        Withdrawal::Batch(id) => Ok(client.withdraw_batch(*id).await?),
        Withdrawal::Trajectory(number) => {
            let keys = keys.ok_or_else(|| {
                CustodyError::Input(
                    "withdrawing a trajectory needs the provider's keys (--keys DIR or keys in kwm.toml): \
                     its number is pseudonymised with trajectory.key"
                        .into(),
                )
            })?;
            let p = trajectory_pseudonym(keys, number).map_err(CustodyError::Input)?;
            Ok(client.withdraw_trajectory(&p).await?)
        }
    }
}

/// Writes records as CSV with a header of [`EXPORT_COLUMNS`]; absent fields are empty.
pub fn write_csv<W: Write>(records: &[ExportedRecord], out: W) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(EXPORT_COLUMNS)?;
    for r in records {
        let value = serde_json::to_value(r)?;
        let row = EXPORT_COLUMNS.iter().map(|c| match value.get(*c) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        });
        w.write_record(row)?;
    }
    w.flush()
}

/// Exports the provider's stored records into a CSV file (written whole to a temporary file next to
/// it, then renamed, so that a failed export leaves no half file). Returns the number of records.
pub async fn export_csv(client: &Client, path: &std::path::Path) -> Result<usize, CustodyError> {
    let records = client.export().await?;
    let write_err = |source| CustodyError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile_in(dir).map_err(write_err)?;
    write_csv(&records, std::io::BufWriter::new(&mut tmp.1)).map_err(write_err)?;
    tmp.1.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        write_err(e)
    })?;
    Ok(records.len())
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file next to it, then renamed.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    let written = tmp.1.write_all(bytes).and_then(|()| tmp.1.sync_all());
    let renamed = written.and_then(|()| std::fs::rename(&tmp.0, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp.0);
    }
    renamed
}

/// A new file in `dir` with a unique name.
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = format!(".kwm-export-{}.tmp", uuid::Uuid::new_v4().simple());
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwm_schemas::codes::AgeBand;

    fn record() -> ExportedRecord {
        ExportedRecord {
            trajectory: Pseudonym([2; 32]),
            municipality: "GM0748".parse().expect("valid"),
            target_group: "P01".parse().expect("valid"),
            intensity: None,
            product_category: None,
            start_month: "2024-02".parse().expect("valid"),
            end_month: None,
            age_band: AgeBand::Age12To17,
            end_reason: None,
            satisfaction: None,
            respondent: None,
            carry_on_without_help: None,
            problem_t_pre: None,
            problem_t_post: None,
            instrument: None,
            goals_agreed: None,
            goals_achieved: None,
        }
    }

    #[test]
    fn csv_has_every_column_and_empty_absent_fields() {
        let mut out = Vec::new();
        write_csv(&[record()], &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(EXPORT_COLUMNS.join(",").as_str()));
        let row: Vec<&str> = lines.next().expect("a row").split(',').collect();
        assert_eq!(row.len(), EXPORT_COLUMNS.len());
        assert_eq!(row[0], "02".repeat(32));
        assert_eq!(&row[1..3], ["GM0748", "P01"]);
        assert_eq!(row[5], "2024-02");
        assert_eq!(row[7], "12-17");
        assert!(row[8..].iter().all(|f| f.is_empty()));
    }

    #[test]
    fn the_column_list_names_every_field_of_the_record() {
        use kwm_schemas::codes::{
            CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction,
            TScore,
        };
        let full = ExportedRecord {
            intensity: Some(Intensity::new(2).expect("valid")),
            product_category: Some(ProductCategory::new(45).expect("valid")),
            end_month: Some("2024-11".parse().expect("valid")),
            end_reason: Some(EndReason::ACCORDING_TO_PLAN),
            satisfaction: Some(Satisfaction::new(8).expect("valid")),
            respondent: Some(Respondent::Parent),
            carry_on_without_help: Some(CarryOn::Yes),
            problem_t_pre: Some(TScore::new(68).expect("valid")),
            problem_t_post: Some(TScore::new(55).expect("valid")),
            instrument: Some("CBCL".parse().expect("valid")),
            goals_agreed: Some(GoalCount::new(4).expect("valid")),
            goals_achieved: Some(GoalCount::new(3).expect("valid")),
            ..record()
        };
        let value = serde_json::to_value(&full).expect("json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), EXPORT_COLUMNS.len());
        for c in EXPORT_COLUMNS {
            assert!(keys.contains(&c), "{c}");
        }
        let mut out = Vec::new();
        write_csv(&[full], &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let row = text.lines().nth(1).expect("a row");
        assert!(!row.split(',').any(str::is_empty), "{row}");
    }

    #[test]
    fn trajectory_ids_are_checked_and_pseudonymised_as_on_upload() {
        let keys = ProviderKeys::generate().expect("keys");
        let p = trajectory_pseudonym(&keys, " T-17 ").expect("valid");
        assert_eq!(p, trajectory_pseudonym(&keys, "T-17").expect("valid"));
        assert!(trajectory_pseudonym(&keys, "  ").is_err());
        assert!(trajectory_pseudonym(&keys, &"x".repeat(101)).is_err());
    }
}
