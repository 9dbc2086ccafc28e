//! `kwm synth`: realistic synthetic provider exports for demos, tests and benchmarks. One shared child
//! population (valid BSNs, birth dates, home municipalities weighted by population) receives care at
//! several providers, with repeat trajectories shortly after an earlier one ended, and per-target-group
//! distributions of end reasons, satisfaction, T-scores and goals. Deterministic: the same options give the
//! same bytes (ChaCha8 seeded from the seed, no hash-map iteration anywhere).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kwm_schemas::codes::{CarryOn, Respondent};
use kwm_schemas::region::TargetGroupKind;
use kwm_schemas::{AgbCode, MunicipalityCode, RegionConfig};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Normal;
use time::{Date, Duration};

use crate::coarsen::age_in_years;
use crate::export::Column;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Where [`generate`] writes `<agb>.csv` per provider and `providers.txt`.
    pub out_dir: PathBuf,
    pub providers: u32,
    /// Trajectories in total, over all providers (the larger providers get more).
    pub trajectories: u64,
    pub seed: u64,
    /// Codebooks to draw from; WBW by default.
    pub region: RegionConfig,
    /// Trajectories start between 1 January of `first_year` and the export date, 31 December of
    /// `last_year`; those that end after the export date are still running (no end date).
    pub first_year: i32,
    pub last_year: i32,
}

impl SynthOptions {
    pub fn new(out_dir: impl Into<PathBuf>, providers: u32, trajectories: u64, seed: u64) -> Self {
        Self {
            out_dir: out_dir.into(),
            providers,
            trajectories,
            seed,
            region: RegionConfig::wbw(),
            first_year: 2021,
            last_year: 2025,
        }
    }

    fn check(&self) -> Result<(), SynthError> {
        if self.providers == 0 || self.providers > 10_000 {
            return Err(SynthError::Options(
                "--providers must be between 1 and 10000".into(),
            ));
        }
        if self.first_year < 1950 || self.last_year > 2900 || self.first_year > self.last_year {
            return Err(SynthError::Options(
                "the years must satisfy 1950 <= first year <= last year <= 2900".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}")]
    Options(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One generated export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthProvider {
    pub agb: AgbCode,
    pub path: PathBuf,
    pub rows: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOutput {
    pub providers: Vec<SynthProvider>,
    /// `providers.txt`: the AGB codes, one per line.
    pub providers_file: PathBuf,
    pub children: u64,
    pub trajectories: u64,
}

/// Writes one export per provider into `opts.out_dir` (created if needed) and `providers.txt`.
pub fn generate(opts: &SynthOptions) -> Result<SynthOutput, SynthError> {
    opts.check()?;
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(io_at(&opts.out_dir))?;
    let mut gen = Generator::new(opts)?;
    let paths: Vec<PathBuf> = gen
        .providers()
        .iter()
        .map(|p| opts.out_dir.join(format!("{}.csv", p.agb)))
        .collect();
    let mut writers = Vec::with_capacity(paths.len());
    for p in &paths {
        let f = File::create(p).map_err(io_at(p))?;
        writers.push(BufWriter::with_capacity(1 << 16, f));
    }
    let rows = gen.write_all(&mut writers).map_err(io_at(&opts.out_dir))?;
    for (w, p) in writers.iter_mut().zip(&paths) {
        w.flush().map_err(io_at(p))?;
    }
    let providers_file = opts.out_dir.join("providers.txt");
    let list: String = gen
        .providers()
        .iter()
        .map(|p| format!("{}\n", p.agb))
        .collect();
    std::fs::write(&providers_file, list).map_err(io_at(&providers_file))?;
    Ok(SynthOutput {
        providers: gen
            .providers()
            .iter()
            .zip(paths)
            .zip(&rows)
            .map(|((p, path), rows)| SynthProvider {
                agb: p.agb,
                path,
                rows: *rows,
            })
            .collect(),
        providers_file,
        children: gen.children(),
        trajectories: rows.iter().sum(),
    })
}

/// Streams a single-provider export of `rows` trajectories into `w` (for benchmarks of large files);
/// returns the provider's AGB code. Same seed, same bytes.
pub fn write_single_export<W: Write>(w: W, rows: u64, seed: u64) -> io::Result<AgbCode> {
    let opts = SynthOptions::new(PathBuf::new(), 1, rows, seed);
    let mut gen = Generator::new(&opts).map_err(|e| io::Error::other(e.to_string()))?;
    let agb = gen.providers()[0].agb;
    let mut writers = [BufWriter::with_capacity(1 << 16, w)];
    gen.write_all(&mut writers)?;
    writers[0].flush()?;
    Ok(agb)
}

/// Every provider's export in memory, in provider order: for tests.
pub fn exports_in_memory(opts: &SynthOptions) -> Result<Vec<(AgbCode, Vec<u8>)>, SynthError> {
    let mut gen = Generator::new(opts)?;
    let agbs: Vec<AgbCode> = gen.providers().iter().map(|p| p.agb).collect();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); agbs.len()];
    gen.write_all(&mut bufs).map_err(|source| SynthError::Io {
        path: PathBuf::from("<memory>"),
        source,
    })?;
    Ok(agbs.into_iter().zip(bufs).collect())
}

/// How one provider writes its export, so that the files exercise what real exports vary in.
#[derive(Debug, Clone)]
pub struct ProviderStyle {
    pub agb: AgbCode,
    /// `;` with a byte order mark (Dutch Excel) or `,`.
    pub delimiter: u8,
    pub bom: bool,
    /// `GM0748` or `0748`.
    pub gm_prefix: bool,
    pub id_prefix: &'static str,
    /// Relative share of the children this provider sees.
    weight: f64,
}

/// One synthetic trajectory, as a provider's system would export it.
#[derive(Debug, Clone)]
pub struct SynthTrajectory {
    /// Index into [`Generator::providers`].
    pub provider: usize,
    /// The child's BSN, nine ASCII digits (synthetic, passes the elfproef).
    pub bsn: [u8; 9],
    pub trajectory_id: String,
    pub municipality: MunicipalityCode,
    pub target_group: String,
    pub intensity: Option<u8>,
    pub product_category: Option<u8>,
    pub start: Date,
    pub end: Option<Date>,
    pub birth: Date,
    pub end_reason: Option<u8>,
    pub satisfaction: Option<u8>,
    pub respondent: Option<Respondent>,
    pub carry_on: Option<CarryOn>,
    pub t_pre: Option<u8>,
    pub t_post: Option<u8>,
    pub instrument: Option<String>,
    pub goals_agreed: Option<u8>,
    pub goals_achieved: Option<u8>,
}

/// The WBW municipalities with their approximate population (CBS, 2024), so that Roosendaal and Bergen op
/// Zoom have the most children. Codes of another region get a middling weight.
const POPULATION: &[(u16, f64)] = &[
    (1674, 77_900.0), // Roosendaal
    (748, 69_000.0),  // Bergen op Zoom
    (777, 45_300.0),  // Etten-Leur
    (1709, 37_700.0), // Moerdijk
    (1655, 30_600.0), // Halderberge
    (851, 25_000.0),  // Steenbergen
    (840, 22_700.0),  // Rucphen
    (873, 22_200.0),  // Woensdrecht
    (879, 22_000.0),  // Zundert
];

const ID_PREFIXES: &[&str] = &["TR-", "ZT", "", "JH/", "DOS-"];

/// The generator: an iterator of trajectories over the shared child population.
pub struct Generator {
    rng: ChaCha8Rng,
    providers: Vec<ProviderStyle>,
    provider_dist: WeightedIndex<f64>,
    municipalities: Vec<MunicipalityCode>,
    municipality_dist: WeightedIndex<f64>,
    profiles: Vec<(String, usize)>,
    complex: Vec<(String, usize)>,
    instruments: Vec<String>,
    first_day: Date,
    export_day: Date,
    days: i64,
    next_seq: Vec<u64>,
    bsn_mult: u64,
    bsn_add: u64,
    bsn_counter: u64,
    total: u64,
    emitted: u64,
    children: u64,
    pending: std::collections::VecDeque<SynthTrajectory>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("providers", &self.providers.len())
            .field("total", &self.total)
            .field("emitted", &self.emitted)
            .finish_non_exhaustive()
    }
}

fn date(y: i32, m: time::Month, d: u8) -> Result<Date, SynthError> {
    Date::from_calendar_date(y, m, d).map_err(|e| SynthError::Options(e.to_string()))
}

impl Generator {
    pub fn new(opts: &SynthOptions) -> Result<Self, SynthError> {
        opts.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let region = &opts.region;

        let mut agbs = BTreeSet::new();
        let mut providers = Vec::with_capacity(opts.providers as usize);
        for i in 0..opts.providers {
            // "99" is no AGB care-provider type, so synthetic codes cannot be mistaken for real ones.
            let agb = loop {
                let n: u32 = rng.random_range(0..1_000_000);
                if agbs.insert(n) {
                    break n;
                }
            };
            let agb: AgbCode = format!("99{agb:06}")
                .parse()
                .map_err(|e: kwm_schemas::ParseError| SynthError::Options(e.0))?;
            let excel = rng.random_bool(0.4);
            providers.push(ProviderStyle {
                agb,
                delimiter: if excel { b';' } else { b',' },
                bom: excel,
                gm_prefix: rng.random_bool(0.75),
                id_prefix: ID_PREFIXES[rng.random_range(0..ID_PREFIXES.len())],
                // A few large providers and a long tail, as in every region.
                weight: 1.0 / f64::from(i + 1).powf(0.8),
            });
        }
        let provider_dist = WeightedIndex::new(providers.iter().map(|p| p.weight))
            .map_err(|e| SynthError::Options(e.to_string()))?;

        let municipalities: Vec<MunicipalityCode> =
            region.municipalities.iter().map(|m| m.code).collect();
        let municipality_dist = WeightedIndex::new(municipalities.iter().map(|m| {
            POPULATION
                .iter()
                .find(|(n, _)| *n == m.number())
                .map(|(_, w)| *w)
                .unwrap_or(30_000.0)
        }))
        .map_err(|e| SynthError::Options(e.to_string()))?;

        let mut profiles = Vec::new();
        let mut complex = Vec::new();
        for (i, t) in region.target_groups.iter().enumerate() {
            match t.kind {
                TargetGroupKind::Complex => complex.push((t.code.to_string(), i)),
                _ => profiles.push((t.code.to_string(), i)),
            }
        }
        if profiles.is_empty() && complex.is_empty() {
            return Err(SynthError::Options(
                "the region has no target groups".into(),
            ));
        }
        let instruments = region
            .instruments
            .iter()
            .map(|i| i.code.to_string())
            .collect();

        let first_day = date(opts.first_year, time::Month::January, 1)?;
        let export_day = date(opts.last_year, time::Month::December, 31)?;
        let next_seq = providers
            .iter()
            .map(|_| rng.random_range(1_000u64..500_000))
            .collect();
        // BSNs: an affine bijection of the 8-digit space (the multiplier is coprime with 10^8) picks
        // the first eight digits of child after child without repeats; the ninth is the check digit.
        let bsn_mult = loop {
            let m = rng.random_range(10_000_000u64..99_999_999);
            if m % 2 != 0 && m % 5 != 0 {
                break m;
            }
        };
        let bsn_add = rng.random_range(0..100_000_000u64);
        Ok(Self {
            rng,
            providers,
            provider_dist,
            municipalities,
            municipality_dist,
            profiles,
            complex,
            instruments,
            first_day,
            export_day,
            days: (export_day - first_day).whole_days(),
            next_seq,
            bsn_mult,
            bsn_add,
            bsn_counter: 0,
            total: opts.trajectories,
            emitted: 0,
            children: 0,
            pending: std::collections::VecDeque::new(),
        })
    }

    pub fn providers(&self) -> &[ProviderStyle] {
        &self.providers
    }

    /// Children generated so far.
    pub fn children(&self) -> u64 {
        self.children
    }

    /// Writes every remaining trajectory as a CSV row to its provider's writer (one writer per provider,
    /// in provider order), headers first. Returns the rows per provider.
    pub fn write_all<W: Write>(&mut self, writers: &mut [W]) -> io::Result<Vec<u64>> {
        if writers.len() != self.providers.len() {
            return Err(io::Error::other("one writer per provider is needed"));
        }
        for (w, style) in writers.iter_mut().zip(&self.providers) {
            write_header(w, style)?;
        }
        let mut rows = vec![0u64; writers.len()];
        let mut line = Vec::with_capacity(256);
        while let Some(t) = self.next() {
            let style = &self.providers[t.provider];
            line.clear();
            t.write_csv(&mut line, style)?;
            writers[t.provider].write_all(&line)?;
            rows[t.provider] += 1;
        }
        Ok(rows)
    }

    fn next_bsn(&mut self) -> [u8; 9] {
        loop {
            self.bsn_counter += 1;
            let first8 =
                (self.bsn_counter.wrapping_mul(self.bsn_mult) + self.bsn_add) % 100_000_000;
            let mut d = [0u8; 9];
            let mut n = first8;
            for i in (0..8).rev() {
                d[i] = (n % 10) as u8;
                n /= 10;
            }
            let sum: i64 = (0..8).map(|i| (9 - i as i64) * i64::from(d[i])).sum();
            let check = sum.rem_euclid(11);
            // No check digit fits when the remainder is 10; real BSNs never start with two zeros.
            if check == 10 || (d[0] == 0 && d[1] == 0) {
                continue;
            }
            d[8] = check as u8;
            for x in &mut d {
                *x += b'0';
            }
            return d;
        }
    }

    fn pick_target_group(&mut self) -> (String, bool, usize) {
        let complex =
            !self.complex.is_empty() && (self.profiles.is_empty() || self.rng.random_bool(0.12));
        let list = if complex {
            &self.complex
        } else {
            &self.profiles
        };
        // Lower-numbered profiles are bought more often.
        let weights: Vec<f64> = (0..list.len())
            .map(|i| 1.0 / (1.0 + i as f64 * 0.25))
            .collect();
        let i = WeightedIndex::new(&weights)
            .map(|w| w.sample(&mut self.rng))
            .unwrap_or(0);
        let (code, idx) = list[i].clone();
        (code, complex, idx)
    }

    fn other_provider(&mut self, not: usize) -> usize {
        if self.providers.len() == 1 {
            return 0;
        }
        loop {
            let p = self.provider_dist.sample(&mut self.rng);
            if p != not {
                return p;
            }
        }
    }

    /// Generates one child and the trajectories of its care history into `pending`.
    fn child(&mut self) {
        self.children += 1;
        let bsn = self.next_bsn();
        let municipality = self.municipalities[self.municipality_dist.sample(&mut self.rng)];
        // Age at the first start: most children are of school age.
        let age_weights: [f64; 23] = [
            3.0, 4.0, 4.0, 5.0, 6.0, 7.0, 8.0, 8.0, 9.0, 9.0, 9.0, 9.0, 10.0, 10.0, 10.0, 10.0,
            9.0, 8.0, 3.0, 2.0, 1.5, 1.0, 1.0,
        ];
        let age = WeightedIndex::new(age_weights)
            .map(|w| w.sample(&mut self.rng))
            .unwrap_or(8) as i64;
        let first_start = self.first_day + Duration::days(self.rng.random_range(0..=self.days));
        let mut birth =
            first_start - Duration::days(age * 365 + age / 4 + self.rng.random_range(0..365));
        while age_in_years(birth, first_start) > 22 {
            birth += Duration::days(30);
        }
        let count = match self.rng.random_range(0..100) {
            0..=69 => 1,
            70..=89 => 2,
            90..=96 => 3,
            _ => 4,
        };
        let main = self.provider_dist.sample(&mut self.rng);
        let mut prev: Option<(Date, Option<Date>, usize, String, bool, usize)> = None;
        for _ in 0..count {
            let (start, provider, tg) = match &prev {
                None => (first_start, main, None),
                Some((pstart, pend, pprov, ptg, pcx, pidx)) => {
                    let same_tg = Some((ptg.clone(), *pcx, *pidx));
                    match pend {
                        Some(end) => {
                            let r = self.rng.random_range(0..100);
                            if r < 45 {
                                // A repeat: new care within months of the end (herhaald beroep).
                                let s = *end + Duration::days(self.rng.random_range(7..=200));
                                let p = if self.rng.random_bool(0.55) {
                                    *pprov
                                } else {
                                    self.other_provider(*pprov)
                                };
                                (
                                    s,
                                    p,
                                    if self.rng.random_bool(0.5) {
                                        same_tg
                                    } else {
                                        None
                                    },
                                )
                            } else if r < 85 {
                                let s = *end + Duration::days(self.rng.random_range(200..=900));
                                let p = if self.rng.random_bool(0.5) {
                                    *pprov
                                } else {
                                    self.other_provider(*pprov)
                                };
                                (s, p, None)
                            } else {
                                // Care at a second provider alongside the first.
                                let span = (*end - *pstart).whole_days().max(1);
                                let s = *pstart + Duration::days(self.rng.random_range(0..span));
                                (s, self.other_provider(*pprov), None)
                            }
                        }
                        None => {
                            let span = (self.export_day - *pstart).whole_days().max(1);
                            let s = *pstart + Duration::days(self.rng.random_range(0..span));
                            (s, self.other_provider(*pprov), None)
                        }
                    }
                }
            };
            if start > self.export_day || age_in_years(birth, start) > 22 {
                break;
            }
            let (tg, complex, tg_index) = match tg {
                Some(t) => t,
                None => self.pick_target_group(),
            };
            let t = self.trajectory(
                provider,
                bsn,
                municipality,
                birth,
                start,
                &tg,
                complex,
                tg_index,
            );
            prev = Some((start, t.end, provider, tg, complex, tg_index));
            self.pending.push_back(t);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn trajectory(
        &mut self,
        provider: usize,
        bsn: [u8; 9],
        municipality: MunicipalityCode,
        birth: Date,
        start: Date,
        target_group: &str,
        complex: bool,
        tg_index: usize,
    ) -> SynthTrajectory {
        let rng = &mut self.rng;
        let seq = self.next_seq[provider];
        self.next_seq[provider] += 1;
        let trajectory_id = format!("{}{seq:06}", self.providers[provider].id_prefix);

        let intensity = (!complex).then(|| pick(rng, &[35.0, 35.0, 20.0, 10.0]) as u8 + 1);
        let product_category = if rng.random_bool(0.9) {
            Some(if complex {
                [40, 43, 45, 54][pick(rng, &[30.0, 20.0, 30.0, 20.0])]
            } else {
                [45, 46, 54][pick(rng, &[70.0, 15.0, 15.0])]
            })
        } else {
            None
        };

        // End reasons vary by target group so that the criteria differ between groups.
        let shift = (tg_index % 5) as f64 * 3.0 - 6.0;
        let weights = if complex {
            [58.0 + shift, 15.0 - shift / 2.0, 6.0, 10.0, 6.0, 5.0]
        } else {
            [72.0 + shift, 9.0 - shift / 3.0, 3.0, 8.0, 4.0, 4.0]
        };
        let reason = match pick(rng, &weights) {
            0 => 31,
            1 => 32,
            2 => 33,
            3 => 34,
            4 => 35,
            _ => [2, 20, 36, 37, 38, 39][rng.random_range(0..6)],
        };
        let months = if complex {
            rng.random_range(6..=30)
        } else {
            let (lo, hi) =
                [(3, 9), (4, 12), (6, 15), (8, 20)][usize::from(intensity.unwrap_or(2)) - 1];
            rng.random_range(lo..=hi)
        };
        let mut days = months * 30 + rng.random_range(0..30);
        if (32..=35).contains(&reason) {
            days = (days as f64 * rng.random_range(0.3..0.9)) as i64;
        }
        let end = start + Duration::days(days.max(1));
        let ended = end <= self.export_day;
        let end_reason = ended.then_some(reason);
        let age = age_in_years(birth, start);

        let satisfaction_share = match end_reason {
            Some(32) => 0.3,
            Some(_) => 0.65,
            None => 0.08,
        };
        let satisfaction = rng.random_bool(satisfaction_share).then(|| {
            let w: &[f64] = if matches!(end_reason, Some(32 | 33)) {
                &[3.0, 3.0, 5.0, 8.0, 12.0, 20.0, 22.0, 17.0, 7.0, 3.0]
            } else {
                &[1.0, 1.0, 2.0, 3.0, 5.0, 12.0, 25.0, 30.0, 15.0, 6.0]
            };
            pick(rng, w) as u8 + 1
        });
        let respondent = satisfaction.map(|_| {
            let w: [f64; 3] = match age {
                0..=11 => [5.0, 75.0, 20.0],
                12..=17 => [40.0, 35.0, 25.0],
                _ => [85.0, 5.0, 10.0],
            };
            [Respondent::Youth, Respondent::Parent, Respondent::Both][pick(rng, &w)]
        });
        let carry_on = (ended && rng.random_bool(0.75)).then(|| {
            let w = if end_reason == Some(31) {
                [65.0, 20.0, 15.0]
            } else {
                [25.0, 55.0, 20.0]
            };
            [CarryOn::Yes, CarryOn::No, CarryOn::Unknown][pick(rng, &w)]
        });

        let mut instrument = None;
        let mut t_pre = None;
        let mut t_post = None;
        if !self.instruments.is_empty() && rng.random_bool(0.65) {
            let preferred: &[(&str, f64)] = match age {
                0..=3 => &[("OBVL", 60.0), ("CBCL", 40.0)],
                4..=11 => &[("CBCL", 60.0), ("SDQ", 30.0), ("TRF", 10.0)],
                12..=17 => &[("YSR", 45.0), ("CBCL", 30.0), ("SDQ", 25.0)],
                _ => &[("YSR", 80.0), ("SDQ", 20.0)],
            };
            let available: Vec<(&str, f64)> = preferred
                .iter()
                .copied()
                .filter(|(c, _)| self.instruments.iter().any(|i| i == c))
                .collect();
            let code = if available.is_empty() {
                self.instruments[rng.random_range(0..self.instruments.len())].clone()
            } else {
                let w: Vec<f64> = available.iter().map(|a| a.1).collect();
                available[pick(rng, &w)].0.to_string()
            };
            let pre = Normal::<f64>::new(66.0 + if complex { 4.0 } else { 0.0 }, 7.0)
                .map(|n| n.sample(rng))
                .unwrap_or(66.0)
                .round()
                .clamp(35.0, 95.0);
            t_pre = Some(pre as u8);
            if ended && rng.random_bool(0.8) {
                let improvement = match end_reason {
                    Some(31) => 9.0,
                    Some(32) => 2.0,
                    Some(33 | 35) => 3.0,
                    Some(34) => 5.0,
                    _ => 4.0,
                };
                let post = Normal::<f64>::new(pre - improvement, 7.0)
                    .map(|n| n.sample(rng))
                    .unwrap_or(pre)
                    .round()
                    .clamp(20.0, 100.0);
                t_post = Some(post as u8);
            }
            instrument = Some(code);
        }

        let (goals_agreed, goals_achieved) = if rng.random_bool(0.8) {
            let agreed = pick(rng, &[10.0, 25.0, 30.0, 20.0, 10.0, 5.0]) as u8 + 1;
            let achieved = ended.then(|| {
                let p = match end_reason {
                    Some(31) => 0.8,
                    Some(32) => 0.35,
                    _ => 0.5,
                };
                (0..agreed).filter(|_| rng.random_bool(p)).count() as u8
            });
            (Some(agreed), achieved)
        } else {
            (None, None)
        };

        SynthTrajectory {
            provider,
            bsn,
            trajectory_id,
            municipality,
            target_group: target_group.to_string(),
            intensity,
            product_category,
            start,
            end: ended.then_some(end),
            birth,
            end_reason,
            satisfaction,
            respondent,
            carry_on,
            t_pre,
            t_post,
            instrument,
            goals_agreed,
            goals_achieved,
        }
    }
}

fn pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    WeightedIndex::new(weights)
        .map(|w| w.sample(rng))
        .unwrap_or(0)
}

impl Iterator for Generator {
    type Item = SynthTrajectory;

    fn next(&mut self) -> Option<SynthTrajectory> {
        if self.emitted >= self.total {
            return None;
        }
        while self.pending.is_empty() {
            self.child();
        }
        self.emitted += 1;
        let t = self.pending.pop_front();
        if self.emitted >= self.total {
            self.pending.clear();
        }
        t
    }
}

fn write_header<W: Write>(w: &mut W, style: &ProviderStyle) -> io::Result<()> {
    if style.bom {
        w.write_all(b"\xEF\xBB\xBF")?;
    }
    let d = char::from(style.delimiter).to_string();
    let names: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
    w.write_all(names.join(&d).as_bytes())?;
    w.write_all(b"\r\n")
}

impl SynthTrajectory {
    /// The row in the canonical column order of [`Column::ALL`], with the provider's style.
    pub fn write_csv<W: Write>(&self, w: &mut W, style: &ProviderStyle) -> io::Result<()> {
        let d = char::from(style.delimiter);
        let opt = |v: Option<u8>| v.map(|v| v.to_string()).unwrap_or_default();
        let date = |v: Option<Date>| v.map(iso).unwrap_or_default();
        let muni = if style.gm_prefix {
            self.municipality.to_string()
        } else {
            format!("{:04}", self.municipality.number())
        };
        // Only ASCII digits are in `bsn`.
        let bsn = std::str::from_utf8(&self.bsn).unwrap_or_default();
        write!(
            w,
            "{bsn}{d}{}{d}{muni}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}{d}{}\r\n",
            self.trajectory_id,
            self.target_group,
            opt(self.intensity),
            opt(self.product_category),
            iso(self.start),
            date(self.end),
            iso(self.birth),
            self.end_reason.map(|r| format!("{r:02}")).unwrap_or_default(),
            opt(self.satisfaction),
            self.respondent.map(|r| r.as_str()).unwrap_or_default(),
            self.carry_on.map(|c| c.as_str()).unwrap_or_default(),
            opt(self.t_pre),
            opt(self.t_post),
            self.instrument.as_deref().unwrap_or_default(),
            opt(self.goals_agreed),
            opt(self.goals_achieved),
        )
    }
}

fn iso(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ProviderKeys, RegionalKey};
    use crate::prepare::{self, PrepareContext};
    use crate::pseudonym::Pseudonymiser;
    use std::collections::{BTreeMap, HashSet};

    fn bytes(opts: &SynthOptions) -> Vec<(AgbCode, Vec<u8>)> {
        exports_in_memory(opts).expect("generates")
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = bytes(&SynthOptions::new("", 4, 2_000, 7));
        let b = bytes(&SynthOptions::new("", 4, 2_000, 7));
        let c = bytes(&SynthOptions::new("", 4, 2_000, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn generate_writes_the_files_byte_for_byte_reproducibly() {
        let d1 = tempfile::tempdir().expect("tempdir");
        let d2 = tempfile::tempdir().expect("tempdir");
        let o1 = generate(&SynthOptions::new(d1.path(), 3, 500, 42)).expect("gen");
        let o2 = generate(&SynthOptions::new(d2.path(), 3, 500, 42)).expect("gen");
        assert_eq!(o1.trajectories, 500);
        assert_eq!(o1.providers.iter().map(|p| p.rows).sum::<u64>(), 500);
        let list = std::fs::read_to_string(&o1.providers_file).expect("providers.txt");
        let agbs: Vec<String> = o1.providers.iter().map(|p| p.agb.to_string()).collect();
        assert_eq!(list.lines().collect::<Vec<_>>(), agbs);
        for (p1, p2) in o1.providers.iter().zip(&o2.providers) {
            assert_eq!(p1.path.file_name(), p2.path.file_name());
            assert_eq!(
                std::fs::read(&p1.path).expect("read"),
                std::fs::read(&p2.path).expect("read")
            );
        }
        let mut single_a = Vec::new();
        let mut single_b = Vec::new();
        write_single_export(&mut single_a, 300, 5).expect("write");
        write_single_export(&mut single_b, 300, 5).expect("write");
        assert_eq!(single_a, single_b);
    }

    #[test]
    fn synthetic_exports_pass_the_sdks_own_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = generate(&SynthOptions::new(dir.path(), 5, 4_000, 3)).expect("gen");
        let regional = RegionalKey::generate().expect("key");
        let mut all_clients: BTreeMap<[u8; 32], BTreeSet<usize>> = BTreeMap::new();
        for (i, p) in out.providers.iter().enumerate() {
            let keys = ProviderKeys::generate().expect("keys");
            let ctx =
                PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &keys));
            let prepared = prepare::prepare_file(&p.path, &ctx).expect("reads");
            let shown: Vec<String> = prepared
                .bad_rows
                .iter()
                .take(5)
                .map(|b| b.render(&p.path))
                .collect();
            assert!(prepared.bad_rows.is_empty(), "{}", shown.join("\n"));
            assert_eq!(prepared.records.len() as u64, p.rows);
            for r in &prepared.records {
                all_clients
                    .entry(*r.client.as_bytes())
                    .or_default()
                    .insert(i);
            }
        }
        let multi = all_clients.values().filter(|s| s.len() > 1).count();
        assert!(multi > 0, "some children have care at several providers");
        assert!(
            (all_clients.len() as u64) < out.trajectories,
            "children have repeat trajectories"
        );
    }

    #[test]
    fn distributions_are_plausible() {
        let rows: Vec<SynthTrajectory> = Generator::new(&SynthOptions::new("", 6, 20_000, 11))
            .expect("gen")
            .collect();
        assert_eq!(rows.len(), 20_000);
        let ended: Vec<&SynthTrajectory> = rows.iter().filter(|t| t.end.is_some()).collect();
        let running = rows.len() - ended.len();
        assert!(running > 500 && ended.len() > 10_000, "running {running}");
        let share = |f: &dyn Fn(&&SynthTrajectory) -> bool| {
            ended.iter().filter(|t| f(t)).count() as f64 / ended.len() as f64
        };
        let planned = share(&|t| t.end_reason == Some(31));
        assert!((0.55..0.8).contains(&planned), "31: {planned}");
        assert!(share(&|t| t.end_reason == Some(32)) > 0.05);
        assert!(share(&|t| t.end_reason.is_some_and(|r| r == 2 || r == 20 || r >= 36)) > 0.01);
        let sat: Vec<u8> = rows.iter().filter_map(|t| t.satisfaction).collect();
        let mid = sat.iter().filter(|s| (6..=9).contains(*s)).count() as f64 / sat.len() as f64;
        assert!(mid > 0.7, "satisfaction 6..9: {mid}");
        let pairs: Vec<(u8, u8)> = rows.iter().filter_map(|t| t.t_pre.zip(t.t_post)).collect();
        let lower = pairs.iter().filter(|(a, b)| b < a).count() as f64 / pairs.len() as f64;
        assert!(lower > 0.6, "post usually lower: {lower}");
        let complex = rows
            .iter()
            .filter(|t| t.target_group.starts_with('C'))
            .count() as f64
            / rows.len() as f64;
        assert!((0.05..0.25).contains(&complex), "complex share {complex}");
        assert!(rows
            .iter()
            .filter(|t| t.target_group.starts_with('C'))
            .all(|t| t.intensity.is_none()));
        assert!(rows
            .iter()
            .filter(|t| t.target_group.starts_with('P'))
            .all(|t| t.intensity.is_some()));
        // Municipalities by population: Roosendaal and Bergen op Zoom lead.
        let mut per: BTreeMap<u16, usize> = BTreeMap::new();
        for t in &rows {
            *per.entry(t.municipality.number()).or_default() += 1;
        }
        let mut ranked: Vec<(u16, usize)> = per.into_iter().collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
        let top: HashSet<u16> = ranked.iter().take(2).map(|r| r.0).collect();
        assert_eq!(top, HashSet::from([1674, 748]));
        // Years 2021..2025 and ages 0..22 at the start.
        assert!(rows.iter().all(|t| (2021..=2025).contains(&t.start.year())));
        assert!(rows
            .iter()
            .all(|t| (0..=22).contains(&age_in_years(t.birth, t.start))));
        // Repeat trajectories: a new start within 200 days after an end of the same child.
        let mut by_child: BTreeMap<[u8; 9], Vec<&SynthTrajectory>> = BTreeMap::new();
        for t in &rows {
            by_child.entry(t.bsn).or_default().push(t);
        }
        let repeats = by_child
            .values()
            .filter(|ts| {
                ts.iter().any(|a| {
                    a.end.is_some_and(|e| {
                        ts.iter()
                            .any(|b| b.start > e && (b.start - e).whole_days() <= 200)
                    })
                })
            })
            .count();
        assert!(repeats > 100, "repeat trajectories: {repeats}");
    }

    #[test]
    fn bsns_are_valid_and_unique_per_child() {
        let mut g = Generator::new(&SynthOptions::new("", 1, 1, 1)).expect("gen");
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let b = g.next_bsn();
            let s = std::str::from_utf8(&b).expect("ascii");
            assert!(kwm_schemas::Bsn::parse(s).is_ok());
            assert!(seen.insert(b));
        }
    }
}
