//! The engine's form of a stored trajectory: codes resolved against the region's codebook and every
//! per-trajectory fact the criteria need decided once, when the row is read, in a small fixed-size
//! value without heap parts. Millions of them are held by the release index (`crate::index`) and
//! scanned by every build of a period's tables.

use std::collections::HashMap;

use kwm_schemas::codes::CarryOn;
use kwm_schemas::{AgbCode, Month, MunicipalityCode, RegionConfig, WireRecord};

use super::measures::{EndClass, Reliability};

/// A municipality or target group outside the region's codebook (cannot pass ingest; never counted).
pub const OUTSIDE: u16 = u16::MAX;

/// The region's codebook as the engine indexes it: municipalities and target groups by their position
/// in the region file, instruments with their reliability as an exact rational.
#[derive(Debug, Clone)]
pub struct Codebook {
    munis: HashMap<MunicipalityCode, u16>,
    groups: HashMap<String, u16>,
    reliability: HashMap<String, Reliability>,
}

impl Codebook {
    pub fn new(region: &RegionConfig) -> Self {
        Self {
            munis: region
                .municipalities
                .iter()
                .enumerate()
                .map(|(i, m)| (m.code, i as u16))
                .collect(),
            groups: region
                .target_groups
                .iter()
                .enumerate()
                .map(|(i, t)| (t.code.as_str().to_string(), i as u16))
                .collect(),
            reliability: region
                .instruments
                .iter()
                .filter_map(|i| {
                    Some((
                        i.code.as_str().to_string(),
                        Reliability::from_config(i.reliability)?,
                    ))
                })
                .collect(),
        }
    }
}

/// One stored trajectory, as the engine reads it. Holds a client pseudonym and outcome values: never
/// log it (its `Debug` shows neither).
#[derive(Clone, Copy)]
pub struct EngineRow {
    /// Stage-2 client pseudonym.
    pub client: [u8; 32],
    /// Stage-1 trajectory pseudonym: with the provider, the row's key; and the keyed order's input.
    pub trajectory: [u8; 32],
    pub provider: AgbCode,
    /// Months as [`Month::index`]; `end` is [`EngineRow::RUNNING`] while the trajectory runs.
    pub start: i32,
    pub end: i32,
    /// Positions in the region's municipalities and target groups, or [`OUTSIDE`].
    pub muni: u16,
    pub group: u16,
    /// How it ended (set exactly when `end` is).
    pub(crate) end_class: Option<EndClass>,
    /// Carry on without help: yes or no; unknown and not answered are `None`.
    pub without_help: Option<bool>,
    /// Reliable change index at most -1.96; `None` without both T-scores and an instrument with a
    /// usable reliability.
    pub improved: Option<bool>,
    /// The grade 1..10.
    pub grade: Option<u8>,
    /// Goals achieved / agreed in tenths of a percent, 0..=1000; `None` without goals agreed.
    pub goal_tenths: Option<u16>,
}

impl std::fmt::Debug for EngineRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineRow(<redacted>)")
    }
}

impl EngineRow {
    pub const RUNNING: i32 = i32::MAX;

    pub fn new(codebook: &Codebook, provider: AgbCode, rec: &WireRecord) -> Self {
        let end_class = rec.end_month.map(|_| EndClass::of(rec.end_reason));
        let improved = match (rec.problem_t_pre, rec.problem_t_post, &rec.instrument) {
            (Some(pre), Some(post), Some(instrument)) => codebook
                .reliability
                .get(instrument.as_str())
                .map(|r| r.improved(pre.get(), post.get())),
            _ => None,
        };
        let goal_tenths = match (rec.goals_agreed, rec.goals_achieved) {
            (Some(agreed), Some(achieved)) if agreed.get() > 0 => {
                let (agreed, achieved) = (u32::from(agreed.get()), u32::from(achieved.get()));
                // Rounded half up to a tenth of a percent; achieved <= agreed is an ingest rule, the
                // clamp keeps the bound even if it were broken.
                let tenths = (2000 * achieved + agreed) / (2 * agreed);
                Some(tenths.min(1000) as u16)
            }
            _ => None,
        };
        Self {
            client: rec.client.0,
            trajectory: rec.trajectory.0,
            provider,
            start: rec.start_month.index(),
            end: rec.end_month.map_or(Self::RUNNING, Month::index),
            muni: codebook
                .munis
                .get(&rec.municipality)
                .copied()
                .unwrap_or(OUTSIDE),
            group: codebook
                .groups
                .get(rec.target_group.as_str())
                .copied()
                .unwrap_or(OUTSIDE),
            end_class,
            without_help: match rec.carry_on_without_help {
                Some(CarryOn::Yes) => Some(true),
                Some(CarryOn::No) => Some(false),
                Some(CarryOn::Unknown) | None => None,
            },
            improved,
            grade: rec.satisfaction.map(|s| s.get()),
            goal_tenths,
        }
    }

    /// A digest of everything the engine reads of the row (keys and values), for comparing copies of
    /// the stored table ([`crate::index::IndexSummary`]); reveals nothing of the row on its own.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"kwm engine row v1");
        ctx.update(&self.client);
        ctx.update(&self.trajectory);
        ctx.update(self.provider.as_str().as_bytes());
        ctx.update(&self.start.to_be_bytes());
        ctx.update(&self.end.to_be_bytes());
        ctx.update(&self.muni.to_be_bytes());
        ctx.update(&self.group.to_be_bytes());
        let end_class = match self.end_class {
            None => 0u8,
            Some(EndClass::Plan) => 1,
            Some(EndClass::DropOut) => 2,
            Some(EndClass::Other) => 3,
            Some(EndClass::Administrative) => 4,
        };
        let opt_bool = |b: Option<bool>| b.map_or(0u8, |b| 1 + u8::from(b));
        ctx.update(&[
            end_class,
            opt_bool(self.without_help),
            opt_bool(self.improved),
            self.grade.unwrap_or(0),
        ]);
        ctx.update(&self.goal_tenths.map_or(u32::MAX, u32::from).to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether the row's months overlap `first..=last` (month indexes).
    pub fn overlaps(&self, first: i32, last: i32) -> bool {
        self.start <= last && self.end >= first
    }
}
