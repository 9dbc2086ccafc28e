//! Releases as the people who work in spreadsheets want them: a [`Report`] (one frozen release, or a
//! provider's own rows next to the region's) rendered as a Dutch CSV (semicolons, decimal commas, one
//! line per figure) or as an XLSX workbook a policy adviser can forward as it is (sheet "Cijfers" with
//! every value, its 95% interval and n; sheet "Toelichting" explaining statuses and intervals in plain
//! Dutch; sheet "Publicatieronde" with version, date and privacy guarantee). One renderer per format for
//! every reader: the figures are copied from the releases, never computed here. Pure core: bytes out,
//! no file, store or HTTP.

use kwm_schemas::criteria::{Criterion, CriterionKind, Direction};
use kwm_schemas::release::{CellStatus, Figure, Release, ReleaseCell, ReleaseRow, ReleaseScope};
use kwm_schemas::{AgbCode, Code, RegionConfig};
use rust_xlsxwriter::{Color, DocProperties, Format, FormatBorder, Workbook, Worksheet};

/// One column group of a report: whose figures they are and the rows of one frozen release.
#[derive(Debug)]
pub struct Source<'a> {
    /// Heading over the group's columns, and the CSV's "Cijfers van" (`Regio ... (benchmark)`).
    pub heading: String,
    pub release: &'a Release,
    pub rows: Vec<&'a ReleaseRow>,
}

/// What a download shows: the title, and one or more sources side by side.
#[derive(Debug)]
pub struct Report<'a> {
    pub region: &'a RegionConfig,
    /// Whose figures, in words: `gemeente Bergen op Zoom (GM0748)`.
    pub subject: String,
    /// The file name without extension: `kwm-GM0748-2025-v1`.
    pub file_stem: String,
    pub sources: Vec<Source<'a>>,
}

fn scope_name(region: &RegionConfig, scope: ReleaseScope) -> String {
    match scope {
        ReleaseScope::Municipality(m) => match region.municipality(m) {
            Some(muni) => format!("Gemeente {} ({m})", muni.name),
            None => format!("Gemeente {m}"),
        },
        ReleaseScope::Region => format!("{} (regio)", region.name),
        ReleaseScope::Providers => "Alle aanbieders".into(),
    }
}

impl<'a> Report<'a> {
    /// One frozen release.
    pub fn of_release(region: &'a RegionConfig, r: &'a Release) -> Self {
        let subject = scope_name(region, r.scope);
        Self {
            region,
            file_stem: format!(
                "kwm-{}-{}-v{}",
                r.scope,
                r.period,
                r.version.unwrap_or_default()
            ),
            sources: vec![Source {
                heading: subject.clone(),
                release: r,
                rows: r.rows.iter().collect(),
            }],
            subject,
        }
    }

    /// A provider's own rows of the per-provider release next to the region's release (its benchmark).
    pub fn of_scores(
        region: &'a RegionConfig,
        provider: AgbCode,
        own: &'a Release,
        benchmark: &'a Release,
    ) -> Self {
        let subject = format!("Aanbieder AGB {provider}");
        Self {
            region,
            file_stem: format!(
                "kwm-scores-{provider}-{}-v{}",
                benchmark.period,
                benchmark.version.unwrap_or_default()
            ),
            sources: vec![
                Source {
                    heading: format!("Eigen cijfers (AGB {provider})"),
                    release: own,
                    rows: own
                        .rows
                        .iter()
                        .filter(|r| r.provider == Some(provider))
                        .collect(),
                },
                Source {
                    heading: format!("{} (benchmark)", scope_name(region, ReleaseScope::Region)),
                    release: benchmark,
                    rows: benchmark.rows.iter().collect(),
                },
            ],
            subject,
        }
    }

    /// The release that sets period, criteria, round and privacy: the last source (the benchmark of
    /// a provider's scores; both come from the same round).
    fn main(&self) -> &'a Release {
        self.sources
            .last()
            .map(|s| s.release)
            .unwrap_or_else(|| unreachable!("a report has a source"))
    }

    /// The row keys (target group, `None` for the total) in the order the sources show them.
    fn keys(&self) -> Vec<Option<&'a Code>> {
        let mut keys: Vec<Option<&Code>> = Vec::new();
        for s in &self.sources {
            for r in &s.rows {
                let k = r.target_group.as_ref();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        // The total last, as in a release.
        keys.sort_by_key(|k| k.is_none());
        keys
    }

    /// The target group's name: the region file's (which a region updates when it names a group),
    /// else the label the release was published with. A label that starts with its code is not
    /// prefixed again (`P03 (naam volgt van de regio)`).
    fn group_name(&self, key: Option<&Code>) -> String {
        let Some(code) = key else {
            return "Totaal (alle doelgroepen)".into();
        };
        let label = self
            .region
            .target_group(code)
            .map(|t| t.label_nl.clone())
            .or_else(|| {
                self.sources
                    .iter()
                    .flat_map(|s| &s.rows)
                    .find(|r| r.target_group.as_ref() == Some(code))
                    .map(|r| r.label_nl.clone())
            })
            .unwrap_or_default();
        if label.starts_with(code.as_str()) {
            label
        } else {
            format!("{code} {label}")
        }
    }
}

/// The criterion's name as the tables show it: with its number in the national set.
pub fn indicator_name(c: &Criterion) -> String {
    match &c.national_number {
        Some(n) => format!("{n} {}", c.label_nl),
        None => c.label_nl.clone(),
    }
}

/// The unit of a criterion's values, in words.
pub fn unit(c: &Criterion) -> String {
    match c.kind {
        CriterionKind::Percentage => "%".into(),
        CriterionKind::Mean if (c.lower, c.upper) == (0, 100) => "% (gemiddeld per traject)".into(),
        CriterionKind::Mean => format!("rapportcijfer {}-{}", c.lower, c.upper),
        CriterionKind::Count => "aantal trajecten".into(),
    }
}

/// A cell's status in Dutch, as the legend explains it.
pub fn status_nl(c: &ReleaseCell) -> &'static str {
    match c.status {
        CellStatus::Published if c.exact => "exact (eigen gegevens)",
        CellStatus::Published => "gepubliceerd",
        CellStatus::Suppressed => "niet getoond: te weinig kinderen",
        CellStatus::Unreliable => "niet getoond: te onzeker",
    }
}

/// A figure with a decimal comma (`63,4`).
fn figure_nl(f: Figure) -> String {
    f.to_string().replace('.', ",")
}

fn decimal_nl(d: impl std::fmt::Display) -> String {
    d.to_string().replace('.', ",")
}

const MONTHS: [&str; 12] = [
    "januari",
    "februari",
    "maart",
    "april",
    "mei",
    "juni",
    "juli",
    "augustus",
    "september",
    "oktober",
    "november",
    "december",
];

fn month_name(m: u8) -> &'static str {
    MONTHS[usize::from(m.clamp(1, 12) - 1)]
}

/// `2025 (januari t/m december 2025)`.
fn period_nl(r: &Release) -> String {
    let (first, last) = (r.period.first_month(), r.period.last_month());
    format!(
        "{} ({} t/m {} {})",
        r.period,
        month_name(first.month()),
        month_name(last.month()),
        last.year()
    )
}

fn created_nl(r: &Release) -> String {
    match r.created_at {
        Some(t) => format!(
            "{} {} {}, {:02}:{:02} UTC",
            t.day(),
            month_name(u8::from(t.month())),
            t.year(),
            t.hour(),
            t.minute()
        ),
        None => "niet gepubliceerd".into(),
    }
}

fn mechanism_nl(mechanism: &str) -> String {
    match mechanism {
        "discrete-gaussian" => "discrete Gaussische ruis (exact getrokken)".into(),
        "discrete-laplace" => "discrete Laplace-ruis (exact getrokken)".into(),
        other => other.into(),
    }
}

/// The header of the Dutch CSV.
pub const CSV_HEADER: [&str; 13] = [
    "Gebied",
    "Periode",
    "Versie",
    "Cijfers van",
    "Doelgroepcode",
    "Doelgroep",
    "Indicator",
    "Eenheid",
    "Waarde",
    "Ondergrens 95%-interval",
    "Bovengrens 95%-interval",
    "Aantal trajecten (n)",
    "Status",
];

/// The Dutch CSV dialect Excel opens right in a Dutch locale: UTF-8 with a byte order mark, `;` between
/// fields, decimal commas; one line per source, target group and criterion.
pub fn to_csv(report: &Report<'_>) -> anyhow::Result<Vec<u8>> {
    let mut out = "\u{feff}".as_bytes().to_vec();
    {
        let mut w = csv::WriterBuilder::new()
            .delimiter(b';')
            .from_writer(&mut out);
        w.write_record(CSV_HEADER)?;
        let main = report.main();
        let keys = report.keys();
        for s in &report.sources {
            let version = s.release.version.map(|v| v.to_string()).unwrap_or_default();
            for key in &keys {
                let Some(row) = s.rows.iter().find(|r| r.target_group.as_ref() == *key) else {
                    continue;
                };
                for (c, crit) in row.cells.iter().zip(&main.criteria) {
                    let fig = |f: Option<Figure>| f.map(figure_nl).unwrap_or_default();
                    w.write_record([
                        report.subject.clone(),
                        s.release.period.to_string(),
                        version.clone(),
                        s.heading.clone(),
                        key.map(|k| k.to_string())
                            .unwrap_or_else(|| "totaal".into()),
                        report.group_name(*key),
                        indicator_name(crit),
                        unit(crit),
                        fig(c.value),
                        fig(c.ci95_low),
                        fig(c.ci95_high),
                        c.count.map(|n| n.to_string()).unwrap_or_default(),
                        status_nl(c).to_string(),
                    ])?;
                }
            }
        }
        w.flush()?;
    }
    Ok(out)
}

/// The columns of one source on the sheet "Cijfers".
const SOURCE_COLUMNS: [&str; 5] = [
    "Waarde",
    "95%-interval ondergrens",
    "95%-interval bovengrens",
    "Aantal trajecten (n)",
    "Status",
];

/// Row of the column headers on the sheet "Cijfers" (0-based); the figures start below it.
pub const XLSX_HEADER_ROW: u32 = 4;

struct Formats {
    title: Format,
    bold: Format,
    header: Format,
    group: Format,
    wrap: Format,
    tenths: Format,
    whole: Format,
    withheld: Format,
}

impl Formats {
    fn new() -> Self {
        let header = Format::new()
            .set_bold()
            .set_text_wrap()
            .set_background_color(Color::RGB(0xDDEBF7))
            .set_border_bottom(FormatBorder::Thin);
        Self {
            title: Format::new().set_bold().set_font_size(14),
            bold: Format::new().set_bold(),
            group: header
                .clone()
                .set_align(rust_xlsxwriter::FormatAlign::Center),
            header,
            wrap: Format::new()
                .set_text_wrap()
                .set_align(rust_xlsxwriter::FormatAlign::Top),
            tenths: Format::new().set_num_format("0.0"),
            whole: Format::new().set_num_format("0"),
            withheld: Format::new().set_font_color(Color::Gray).set_italic(),
        }
    }

    fn figure(&self, f: Figure) -> (&Format, f64) {
        match f {
            // The exact decimal as a spreadsheet number; the format shows its one decimal.
            Figure::Tenths(t) => (&self.tenths, t as f64 / 10.0),
            Figure::Whole(v) => (&self.whole, v as f64),
        }
    }
}

/// The workbook: "Cijfers" (values, intervals, n and status per target group and indicator),
/// "Toelichting" (the legend) and "Publicatieronde" (version, date, privacy guarantee).
pub fn to_xlsx(report: &Report<'_>) -> anyhow::Result<Vec<u8>> {
    let mut wb = Workbook::new();
    let f = Formats::new();
    let main = report.main();
    let title = format!(
        "Kwaliteitsmonitor {}: {}, {}",
        report.region.name,
        report.subject,
        period_nl(main)
    );
    wb.set_properties(
        &DocProperties::new()
            .set_title(&title)
            .set_author(&report.region.name),
    );
    write_figures(wb.add_worksheet(), report, &f, &title)?;
    write_legend(wb.add_worksheet(), report, &f)?;
    write_round(wb.add_worksheet(), report, &f)?;
    Ok(wb.save_to_buffer()?)
}

fn write_figures(
    sheet: &mut Worksheet,
    report: &Report<'_>,
    f: &Formats,
    title: &str,
) -> anyhow::Result<()> {
    let main = report.main();
    sheet.set_name("Cijfers")?;
    sheet.write_with_format(0, 0, title, &f.title)?;
    sheet.write(
        1,
        0,
        format!(
            "Versie {} van de publicatieronde {}, gepubliceerd op {}. Elke waarde heeft een \
             95%-interval en het aantal trajecten (n) waarover ze berekend is. Het blad Toelichting \
             legt de kolommen en statussen uit; het blad Publicatieronde geeft de privacygarantie.",
            main.version.unwrap_or_default(),
            main.period,
            created_nl(main)
        ),
    )?;
    let fixed = ["Doelgroep", "Indicator", "Eenheid"];
    let first_col = fixed.len() as u16;
    let width = SOURCE_COLUMNS.len() as u16;
    for (i, s) in report.sources.iter().enumerate() {
        let c0 = first_col + i as u16 * width;
        sheet.merge_range(
            XLSX_HEADER_ROW - 1,
            c0,
            XLSX_HEADER_ROW - 1,
            c0 + width - 1,
            &s.heading,
            &f.group,
        )?;
        for (j, h) in SOURCE_COLUMNS.iter().enumerate() {
            sheet.write_with_format(XLSX_HEADER_ROW, c0 + j as u16, *h, &f.header)?;
        }
    }
    for (x, h) in fixed.iter().enumerate() {
        sheet.write_with_format(XLSX_HEADER_ROW, x as u16, *h, &f.header)?;
    }
    let mut y = XLSX_HEADER_ROW + 1;
    for key in report.keys() {
        let name = report.group_name(key);
        for (ci, crit) in main.criteria.iter().enumerate() {
            sheet.write(y, 0, &name)?;
            sheet.write(y, 1, indicator_name(crit))?;
            sheet.write(y, 2, unit(crit))?;
            for (i, s) in report.sources.iter().enumerate() {
                let c0 = first_col + i as u16 * width;
                let Some(cell) = s
                    .rows
                    .iter()
                    .find(|r| r.target_group.as_ref() == key)
                    .and_then(|r| r.cells.get(ci))
                else {
                    sheet.write_with_format(y, c0 + 4, "geen trajecten", &f.withheld)?;
                    continue;
                };
                for (dx, fig) in [(0u16, cell.value), (1, cell.ci95_low), (2, cell.ci95_high)] {
                    if let Some(fig) = fig {
                        let (format, v) = f.figure(fig);
                        sheet.write_number_with_format(y, c0 + dx, v, format)?;
                    }
                }
                if let Some(n) = cell.count {
                    sheet.write_number_with_format(y, c0 + 3, n as f64, &f.whole)?;
                }
                let status = status_nl(cell);
                if cell.status.is_published() {
                    sheet.write(y, c0 + 4, status)?;
                } else {
                    sheet.write_with_format(y, c0 + 4, status, &f.withheld)?;
                }
            }
            y += 1;
        }
    }
    let last_col = first_col + width * report.sources.len() as u16 - 1;
    sheet.autofilter(XLSX_HEADER_ROW, 0, y.saturating_sub(1), last_col)?;
    sheet.set_freeze_panes(XLSX_HEADER_ROW + 1, first_col)?;
    sheet.set_column_width(0, 44)?;
    sheet.set_column_width(1, 30)?;
    sheet.set_column_width(2, 22)?;
    for x in first_col..=last_col {
        let status = (x - first_col) % width == width - 1;
        sheet.set_column_width(x, if status { 30 } else { 13 })?;
    }
    sheet.set_row_height(XLSX_HEADER_ROW, 32)?;
    // Printed: landscape, one page wide, the headings on every page.
    sheet.set_landscape();
    sheet.set_print_fit_to_pages(1, 0);
    sheet.set_repeat_rows(XLSX_HEADER_ROW - 1, XLSX_HEADER_ROW)?;
    Ok(())
}

/// The legend: what the columns, the statuses and the intervals mean, in plain Dutch, and each
/// indicator with its unit, what it is taken over and which way is better.
fn write_legend(sheet: &mut Worksheet, report: &Report<'_>, f: &Formats) -> anyhow::Result<()> {
    let main = report.main();
    let q = &report.region.privacy;
    let step = main.policy.count_rounding;
    sheet.set_name("Toelichting")?;
    sheet.write_with_format(0, 0, "Toelichting bij de cijfers", &f.title)?;
    let mut y = 2u32;
    let section = |sheet: &mut Worksheet, y: &mut u32, heading: &str| -> anyhow::Result<()> {
        sheet.write_with_format(*y, 0, heading, &f.bold)?;
        *y += 1;
        Ok(())
    };
    let pair =
        |sheet: &mut Worksheet, y: &mut u32, term: &str, text: String| -> anyhow::Result<()> {
            sheet.write_with_format(*y, 0, term, &f.wrap)?;
            sheet.write_with_format(*y, 1, text, &f.wrap)?;
            *y += 1;
            Ok(())
        };
    section(sheet, &mut y, "Kolommen")?;
    pair(
        sheet,
        &mut y,
        "Waarde",
        "Het gepubliceerde cijfer, in de eenheid van de kolom Eenheid: een percentage (0 tot 100), \
         een gemiddeld rapportcijfer (1 tot 10) of een aantal trajecten."
            .into(),
    )?;
    pair(
        sheet,
        &mut y,
        "95%-interval",
        "Elk cijfer is een schatting. Om te voorkomen dat iets over één kind te herleiden is, is er \
         bewust een kleine toevalsafwijking (ruis) aan toegevoegd, en aantallen zijn afgerond. Het \
         werkelijke cijfer ligt met 95% zekerheid tussen de ondergrens en de bovengrens. Hoe smaller \
         het interval, hoe nauwkeuriger het cijfer. Overlappen de intervallen van twee cijfers, dan \
         is het verschil tussen die cijfers mogelijk toeval."
            .into(),
    )?;
    pair(
        sheet,
        &mut y,
        "Aantal trajecten (n)",
        format!(
            "Het aantal trajecten waarover een percentage of gemiddelde berekend is, zelf ook met ruis \
             en afgerond op een veelvoud van {step}. Bij de aantallen (In zorg, Gestart, Beëindigd) \
             is de waarde zelf het aantal; ook die zijn afgerond op een veelvoud van {step}."
        ),
    )?;
    y += 1;
    section(sheet, &mut y, "Status van een cijfer")?;
    pair(
        sheet,
        &mut y,
        "gepubliceerd",
        "Het cijfer is betrouwbaar genoeg en wordt getoond, met zijn 95%-interval.".into(),
    )?;
    pair(
        sheet,
        &mut y,
        "niet getoond: te weinig kinderen",
        format!(
            "Er zijn te weinig kinderen in deze groep om een cijfer te tonen zonder dat iets over een \
             individueel kind te herleiden is. Een groep van minder dan {} kinderen wordt (vrijwel) \
             nooit getoond; omdat de beslissing op de cijfers met ruis valt, blijft soms ook een iets \
             grotere groep weg. Dit zegt niet of er geen of maar enkele kinderen zijn.",
            main.policy.k
        ),
    )?;
    pair(
        sheet,
        &mut y,
        "niet getoond: te onzeker",
        format!(
            "Er zijn wel genoeg kinderen, maar het 95%-interval zou breder zijn dan de regio toestaat \
             ({} procentpunten bij percentages, {} punten bij rapportcijfers). Zo'n cijfer zegt te \
             weinig en is weggelaten, zoals het CBS onbetrouwbare cijfers weglaat.",
            decimal_nl(q.max_interval.percentage),
            decimal_nl(q.max_interval.grade)
        ),
    )?;
    pair(
        sheet,
        &mut y,
        "exact (eigen gegevens)",
        "Alleen in het overzicht van een aanbieder: het cijfer is berekend uit de eigen gegevens van \
         de aanbieder, zonder ruis en dus zonder interval. Herhaald beroep hangt af van gegevens van \
         andere aanbieders en heeft daarom wel ruis en een interval."
            .into(),
    )?;
    pair(
        sheet,
        &mut y,
        "geen trajecten",
        "Alleen in het overzicht van een aanbieder: de aanbieder had in deze periode geen trajecten \
         in deze doelgroep."
            .into(),
    )?;
    y += 1;
    section(sheet, &mut y, "Indicatoren")?;
    for (x, h) in ["Indicator", "Eenheid", "Berekend over", "Beter is"]
        .iter()
        .enumerate()
    {
        sheet.write_with_format(y, x as u16, *h, &f.header)?;
    }
    y += 1;
    for c in &main.criteria {
        sheet.write_with_format(y, 0, indicator_name(c), &f.wrap)?;
        sheet.write_with_format(y, 1, unit(c), &f.wrap)?;
        sheet.write_with_format(y, 2, &c.denominator_nl, &f.wrap)?;
        let better = match c.direction {
            Direction::HigherIsBetter => "hoger",
            Direction::LowerIsBetter => "lager",
            Direction::Neutral => "(geen richting)",
        };
        sheet.write_with_format(y, 3, better, &f.wrap)?;
        y += 1;
    }
    y += 1;
    section(sheet, &mut y, "Doelgroepen")?;
    pair(
        sheet,
        &mut y,
        "Namen",
        "De doelgroepen en hun namen komen uit het regiobestand. Een doelgroep die de regio nog geen \
         naam heeft gegeven, staat er met zijn code en \"naam volgt van de regio\"."
            .into(),
    )?;
    sheet.set_column_width(0, 34)?;
    sheet.set_column_width(1, 90)?;
    sheet.set_column_width(2, 48)?;
    sheet.set_column_width(3, 16)?;
    Ok(())
}

/// The round: which version, when, from which data, and the privacy guarantee in words.
fn write_round(sheet: &mut Worksheet, report: &Report<'_>, f: &Formats) -> anyhow::Result<()> {
    let main = report.main();
    let p = &main.privacy;
    sheet.set_name("Publicatieronde")?;
    sheet.write_with_format(0, 0, "Over deze publicatieronde", &f.title)?;
    let charges: Vec<String> = p
        .charges
        .iter()
        .map(|c| format!("{}: rho {}", c.data_year, decimal_nl(c.rho)))
        .collect();
    let mut lines: Vec<(&str, String)> = vec![
        (
            "Regio",
            format!("{} ({})", report.region.name, report.region.code),
        ),
        ("Cijfers van", report.subject.clone()),
        ("Periode", period_nl(main)),
        (
            "Versie",
            format!(
                "{} (een correctie verschijnt als nieuwe versie; eerdere versies blijven op te vragen)",
                main.version.unwrap_or_default()
            ),
        ),
        ("Gepubliceerd op", created_nl(main)),
        (
            "Gegevens gelezen in",
            format!(
                "{} {}",
                month_name(main.as_of.month()),
                main.as_of.year()
            ),
        ),
        (
            "Kenmerk van de ronde",
            main.round.map(|r| r.to_string()).unwrap_or_default(),
        ),
    ];
    for s in &report.sources {
        lines.push((
            "Kenmerk van de tabel",
            format!(
                "{}: {}",
                s.heading,
                s.release.id.map(|r| r.to_string()).unwrap_or_default()
            ),
        ));
    }
    lines.extend([
        ("Privacygarantie", p.guarantee_nl.clone()),
        (
            "In gewone woorden",
            "Alle cijfers van deze ronde (elke gemeente, de regio en de aanbieders) komen uit één \
             meting waaraan toevalsruis is toegevoegd (differentiële privacy). Daardoor is uit deze \
             cijfers, ook samen met andere publicaties, niet af te leiden of een bepaald kind in zorg \
             was of hoe het met dat kind ging. Hoeveel er over de gegevens van één kalenderjaar \
             gepubliceerd mag worden, is begrensd; de service houdt dat bij en weigert meer."
                .into(),
        ),
        ("Ruis", mechanism_nl(&p.mechanism)),
        (
            "Verbruik van deze ronde",
            format!(
                "rho {} (per gegevensjaar: {}); de grens per gegevensjaar is rho {}, dat is \
                 epsilon {} bij delta {}",
                decimal_nl(p.round_rho),
                charges.join(", "),
                decimal_nl(p.rho_per_data_year),
                figure_nl(p.epsilon_per_data_year),
                decimal_nl(p.delta)
            ),
        ),
        (
            "Kleine groepen",
            format!(
                "een cijfer over minder dan {} kinderen wordt hoogstens met kans {} getoond",
                main.policy.k,
                decimal_nl(main.noise.suppression_delta)
            ),
        ),
        (
            "Afronding",
            format!(
                "aantallen op een veelvoud van {}",
                main.policy.count_rounding
            ),
        ),
        (
            "Bron",
            format!(
                "Kwaliteitsmonitor {}: de cijfers zijn die van de bevroren publicatie, ongewijzigd \
                 overgenomen",
                report.region.name
            ),
        ),
    ]);
    for (i, (term, text)) in lines.iter().enumerate() {
        let y = 2 + i as u32;
        sheet.write_with_format(y, 0, *term, &f.bold)?;
        sheet.write_with_format(y, 1, text, &f.wrap)?;
    }
    sheet.set_column_width(0, 26)?;
    sheet.set_column_width(1, 100)?;
    Ok(())
}

/// A plain-text table for a terminal: target groups by criteria; a suppressed cell shows its reason.
pub fn to_text(r: &Release) -> String {
    let short = |s: &str| -> String {
        match s {
            "suppressed" => "supp".into(),
            "unreliable" => "unrel".into(),
            other => other.into(),
        }
    };
    let mut out = String::new();
    let width = 8usize;
    out.push_str(&format!("{:<12}", ""));
    for c in &r.criteria {
        let code: String = c.code.chars().take(width).collect();
        out.push_str(&format!("{code:>width$} "));
    }
    out.push('\n');
    for row in &r.rows {
        let label = match (&row.target_group, row.provider) {
            (Some(t), Some(p)) => format!("{t} {p}"),
            (Some(t), None) => t.to_string(),
            (None, Some(p)) => format!("tot {p}"),
            (None, None) => "totaal".into(),
        };
        out.push_str(&format!("{label:<12}"));
        for c in &row.cells {
            let text = match c.value {
                Some(v) => v.to_string(),
                None => short(c.status.as_str()),
            };
            out.push_str(&format!("{text:>width$} "));
        }
        out.push('\n');
    }
    out
}
