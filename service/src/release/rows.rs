//! The engine's form of a stored trajectory: codes resolved against the region's codebook and every
//! per-trajectory fact the criteria need decided once, when the row is read, in a small fixed-size
//! value without heap parts. Millions of them are held by the release index (`crate::index`) and
//! scanned by every build of a period's tables.

use std::collections::HashMap;

use kwm_schemas::codes::{AgeBand, CarryOn, EndReason, Respondent};
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
    /// Instruments by their position in the region file.
    instruments: HashMap<String, u16>,
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
            instruments: region
                .instruments
                .iter()
                .enumerate()
                .map(|(i, t)| (t.code.as_str().to_string(), i as u16))
                .collect(),
        }
    }
}

/// The codebook dimensions of a row that only research queries read (DESIGN section 4), packed into
/// 24 bits so that [`EngineRow`] keeps its 96 bytes (they fill what was alignment padding):
///
/// | bits  | field            | code                                                        |
/// |-------|------------------|-------------------------------------------------------------|
/// | 0-2   | intensity        | 0 none, 1..=4                                               |
/// | 3-4   | age band         | position in [`AgeBand::ALL`]                                |
/// | 5-6   | respondent       | 0 none, 1 + position in [`Respondent::ALL`]                 |
/// | 7-11  | product category | 0 none, 1 + (category - 40), categories 40..=55             |
/// | 12-15 | end reason       | 0 none, 1 + position in [`EndReason::CODES`]                |
/// | 16-23 | instrument       | 0 none, 1 + position in the region's instruments, 255 other |
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Dims([u8; 3]);

impl std::fmt::Debug for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The end reason is part of a child's record: shown as little as the row's values.
        f.write_str("Dims(<redacted>)")
    }
}

impl Dims {
    /// The instrument code of an instrument outside the codebook's first 254 (never after ingest).
    const OTHER_INSTRUMENT: u32 = 255;

    fn new(codebook: &Codebook, rec: &WireRecord) -> Self {
        let intensity = rec.intensity.map_or(0, |i| u32::from(i.get()));
        let age = AgeBand::ALL
            .iter()
            .position(|a| *a == rec.age_band)
            .unwrap_or(0) as u32;
        let respondent = rec.respondent.map_or(0, |r| {
            1 + Respondent::ALL.iter().position(|x| *x == r).unwrap_or(0) as u32
        });
        let product = rec
            .product_category
            .map_or(0, |p| 1 + u32::from(p.get().saturating_sub(40)).min(15));
        let end_reason = rec.end_reason.map_or(0, |r| {
            1 + EndReason::CODES
                .iter()
                .position(|c| *c == r.code())
                .unwrap_or(0) as u32
        });
        let instrument = rec.instrument.as_ref().map_or(0, |code| {
            match codebook.instruments.get(code.as_str()) {
                Some(&i) if u32::from(i) < Self::OTHER_INSTRUMENT - 1 => 1 + u32::from(i),
                _ => Self::OTHER_INSTRUMENT,
            }
        });
        let packed = intensity
            | age << 3
            | respondent << 5
            | product << 7
            | end_reason << 12
            | instrument << 16;
        let b = packed.to_le_bytes();
        Self([b[0], b[1], b[2]])
    }

    fn packed(self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], 0])
    }

    fn field(self, shift: u32, bits: u32) -> u32 {
        (self.packed() >> shift) & ((1 << bits) - 1)
    }

    /// Intensity 1..=4.
    pub fn intensity(self) -> Option<u8> {
        let v = self.field(0, 3);
        (v != 0).then_some(v as u8)
    }

    /// Position of the age band in [`AgeBand::ALL`].
    pub fn age_band(self) -> u8 {
        self.field(3, 2) as u8
    }

    /// Position of the respondent in [`Respondent::ALL`].
    pub fn respondent(self) -> Option<u8> {
        self.field(5, 2).checked_sub(1).map(|v| v as u8)
    }

    /// The JZ020 product category, 40..=55.
    pub fn product_category(self) -> Option<u8> {
        self.field(7, 5).checked_sub(1).map(|v| 40 + v as u8)
    }

    /// The JZ588 end reason code (02, 20, 31..39).
    pub fn end_reason(self) -> Option<u8> {
        self.field(12, 4)
            .checked_sub(1)
            .and_then(|i| EndReason::CODES.get(i as usize).copied())
    }

    /// Position of the instrument in the region's instruments; `Some(u16::MAX)` for one outside the
    /// codebook.
    pub fn instrument(self) -> Option<u16> {
        match self.field(16, 8) {
            0 => None,
            Self::OTHER_INSTRUMENT => Some(u16::MAX),
            v => Some(v as u16 - 1),
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
    /// The dimensions research queries group and filter by (three bytes, in what was padding).
    pub dims: Dims,
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
            dims: Dims::new(codebook, rec),
        }
    }

    /// A digest of everything the engine reads of the row (keys and values), for comparing copies of
    /// the stored table ([`crate::index::IndexSummary`]); reveals nothing of the row on its own.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"kwm engine row v2");
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
        ctx.update(&self.dims.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether the row's months overlap `first..=last` (month indexes).
    pub fn overlaps(&self, first: i32, last: i32) -> bool {
        self.start <= last && self.end >= first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwm_schemas::codes::{Intensity, ProductCategory, Pseudonym};

    /// The row stays as small as it was before the research dimensions: they fill its padding.
    #[test]
    fn an_engine_row_is_96_bytes() {
        assert_eq!(std::mem::size_of::<EngineRow>(), 96);
        assert_eq!(std::mem::size_of::<Dims>(), 3);
    }

    #[test]
    fn dims_round_trip_every_code() {
        let region = RegionConfig::wbw();
        let codebook = Codebook::new(&region);
        let mut rec = WireRecord {
            client: Pseudonym([1; 32]),
            trajectory: Pseudonym([2; 32]),
            municipality: "GM0748".parse().expect("valid"),
            target_group: "P01".parse().expect("valid"),
            intensity: None,
            product_category: None,
            start_month: "2025-01".parse().expect("valid"),
            end_month: None,
            age_band: AgeBand::Age0To3,
            end_reason: None,
            satisfaction: None,
            respondent: None,
            carry_on_without_help: None,
            problem_t_pre: None,
            problem_t_post: None,
            instrument: None,
            goals_agreed: None,
            goals_achieved: None,
        };
        let agb: AgbCode = "12345678".parse().expect("valid");
        let none = EngineRow::new(&codebook, agb, &rec).dims;
        assert_eq!(
            (
                none.intensity(),
                none.product_category(),
                none.respondent(),
                none.end_reason(),
                none.instrument(),
                none.age_band()
            ),
            (None, None, None, None, None, 0)
        );
        for (i, ((intensity, product), (age, (respondent, reason)))) in (1..=4u8)
            .cycle()
            .zip(40..=55u8)
            .zip(
                AgeBand::ALL.iter().cycle().zip(
                    Respondent::ALL
                        .iter()
                        .cycle()
                        .zip(EndReason::CODES.iter().cycle()),
                ),
            )
            .enumerate()
        {
            rec.intensity = Some(Intensity::new(intensity).expect("valid"));
            rec.product_category = Some(ProductCategory::new(product).expect("valid"));
            rec.age_band = *age;
            rec.respondent = Some(*respondent);
            rec.end_reason = Some(EndReason::new(*reason).expect("valid"));
            let instrument = i % region.instruments.len();
            rec.instrument = Some(region.instruments[instrument].code.clone());
            let d = EngineRow::new(&codebook, agb, &rec).dims;
            assert_eq!(d.intensity(), Some(intensity));
            assert_eq!(d.product_category(), Some(product));
            assert_eq!(AgeBand::ALL[usize::from(d.age_band())], *age);
            assert_eq!(
                d.respondent().map(|r| Respondent::ALL[usize::from(r)]),
                Some(*respondent)
            );
            assert_eq!(d.end_reason(), Some(*reason));
            assert_eq!(d.instrument(), Some(instrument as u16));
        }
    }
}
