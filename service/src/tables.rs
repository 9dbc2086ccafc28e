//! Releases as the people who work in spreadsheets want them: CSV (one line per cell, exact figures as
//! text) and XLSX (a table of target groups by criteria, suppressed cells with their reason, and a sheet
//! with every cell's interval).

use kwm_schemas::release::{Release, ReleaseCell};
use rust_xlsxwriter::{Format, Workbook};

fn row_label(label: &str, code: Option<String>) -> String {
    match code {
        Some(c) => format!("{c} {label}"),
        None => label.to_string(),
    }
}

/// One line per cell: scope, period, version, row, criterion, status, value, interval, count.
pub fn to_csv(r: &Release) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "scope",
        "period",
        "version",
        "target_group",
        "provider",
        "label",
        "criterion",
        "status",
        "value",
        "ci95_low",
        "ci95_high",
        "count",
    ])?;
    let version = r.version.map(|v| v.to_string()).unwrap_or_default();
    let opt =
        |v: &Option<kwm_schemas::release::Figure>| v.map(|f| f.to_string()).unwrap_or_default();
    for row in &r.rows {
        for c in &row.cells {
            w.write_record([
                r.scope.to_string(),
                r.period.to_string(),
                version.clone(),
                row.target_group
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "total".into()),
                row.provider.map(|p| p.to_string()).unwrap_or_default(),
                row.label_nl.clone(),
                c.criterion.clone(),
                c.status.as_str().to_string(),
                opt(&c.value),
                opt(&c.ci95_low),
                opt(&c.ci95_high),
                c.count.map(|n| n.to_string()).unwrap_or_default(),
            ])?;
        }
    }
    Ok(w.into_inner()?)
}

fn cell_text(c: &ReleaseCell) -> String {
    match c.value {
        Some(v) => v.to_string(),
        None => c.status.as_str().to_string(),
    }
}

/// A workbook: sheet "Tabel" (target groups by criteria), sheet "Cellen" (every cell with its interval).
pub fn to_xlsx(r: &Release) -> anyhow::Result<Vec<u8>> {
    let mut wb = Workbook::new();
    let bold = Format::new().set_bold();
    let grey = Format::new()
        .set_font_color(rust_xlsxwriter::Color::Gray)
        .set_italic();
    let sheet = wb.add_worksheet().set_name("Tabel")?;
    sheet.write_with_format(
        0,
        0,
        format!("Kwaliteitsmonitor {} - {} {}", r.region, r.scope, r.period),
        &bold,
    )?;
    sheet.write(
        1,
        0,
        format!(
            "versie {}, k = {}, tellingen afgerond op {}; niet gepubliceerde cellen tonen de reden. {}",
            r.version.map(|v| v.to_string()).unwrap_or_default(),
            r.policy.k,
            r.policy.count_rounding,
            r.privacy.guarantee_nl
        ),
    )?;
    sheet.write_with_format(3, 0, "Doelgroep", &bold)?;
    for (j, c) in r.criteria.iter().enumerate() {
        sheet.write_with_format(3, (j + 1) as u16, &c.label_nl, &bold)?;
    }
    for (i, row) in r.rows.iter().enumerate() {
        let y = (4 + i) as u32;
        sheet.write(
            y,
            0,
            row_label(
                &row.label_nl,
                row.target_group.as_ref().map(|t| t.to_string()),
            ),
        )?;
        for (j, c) in row.cells.iter().enumerate() {
            let x = (j + 1) as u16;
            match c.value {
                // The exact decimal, as a spreadsheet number (display only; the figure is already final).
                Some(v) => sheet.write(y, x, v.tenths() as f64 / 10.0)?,
                None => sheet.write_with_format(y, x, cell_text(c), &grey)?,
            };
        }
    }
    sheet.set_column_width(0, 48)?;

    let cells = wb.add_worksheet().set_name("Cellen")?;
    let header = [
        "doelgroep",
        "aanbieder",
        "criterium",
        "status",
        "waarde",
        "95% van",
        "95% tot",
        "aantal",
    ];
    for (x, h) in header.iter().enumerate() {
        cells.write_with_format(0, x as u16, *h, &bold)?;
    }
    let mut y = 1u32;
    for row in &r.rows {
        for c in &row.cells {
            cells.write(
                y,
                0,
                row.target_group
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "totaal".into()),
            )?;
            cells.write(
                y,
                1,
                row.provider.map(|p| p.to_string()).unwrap_or_default(),
            )?;
            cells.write(y, 2, &c.criterion)?;
            cells.write(y, 3, c.status.as_str())?;
            for (x, f) in [(4u16, c.value), (5, c.ci95_low), (6, c.ci95_high)] {
                if let Some(f) = f {
                    cells.write(y, x, f.tenths() as f64 / 10.0)?;
                }
            }
            if let Some(n) = c.count {
                cells.write(y, 7, n as f64)?;
            }
            y += 1;
        }
    }
    Ok(wb.save_to_buffer()?)
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
