//! The store's types of research access: projects with their own budgets, and the answers charged to
//! them (see migration 0009 and [`super::Store::put_research_answer`]).

use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::audit::NewAuditEntry;

/// A research project as registered by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// `p1`, `p2`, ...: its researchers' tokens have the scope `project:<id>`.
    pub id: String,
    pub name: String,
    pub purpose: String,
    /// Its budget: what it may spend of any one data year, in nano-rho.
    pub rho_nanos: i64,
    pub spent_nanos: i64,
    /// The last day on which it is answered.
    pub expires_on: Date,
    pub created_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
}

/// A project to register; its id is the next free `p<N>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProject {
    pub name: String,
    pub purpose: String,
    pub rho_nanos: i64,
    pub expires_on: Date,
    pub created_at: OffsetDateTime,
}

/// What was given a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResearchKind {
    /// A differentially private answer to a query.
    Query,
    /// An anonymised extract.
    Extract,
}

impl ResearchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Extract => "extract",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "query" => Some(Self::Query),
            "extract" => Some(Self::Extract),
            _ => None,
        }
    }
}

/// An answer to charge to a project and store, with its audit entry, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct NewResearchAnswer {
    pub id: Uuid,
    pub project: String,
    pub kind: ResearchKind,
    /// What was asked (the query as sent).
    pub statement: String,
    /// Who asked: `researcher token 12`.
    pub actor: String,
    /// Charged to the project once and to each of `years`.
    pub rho_nanos: i64,
    /// The calendar years of data the answer reads, ascending, no duplicates.
    pub years: Vec<u16>,
    /// What research may spend of any one data year (the region's research reserve).
    pub reserve_nanos: i64,
    pub at: OffsetDateTime,
    pub answer: serde_json::Value,
    pub audit: NewAuditEntry,
}

/// The outcome of [`super::Store::put_research_answer`]. Anything but `Charged` stored and charged
/// nothing and appended no entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutResearch {
    Charged {
        audit_seq: i64,
        /// What the project has left after this answer, in nano-rho.
        left_nanos: i64,
    },
    NoProject,
    Closed,
    /// Past its last day.
    Expired {
        on: Date,
    },
    /// The project's own budget would be passed.
    ProjectExhausted {
        spent_nanos: i64,
        rho_nanos: i64,
    },
    /// A data year's research reserve would be passed.
    YearExhausted {
        year: u16,
        spent_nanos: i64,
        reserve_nanos: i64,
    },
}

/// One line of a project's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResearchLogEntry {
    pub id: Uuid,
    pub kind: ResearchKind,
    pub statement: String,
    pub actor: String,
    pub rho_nanos: i64,
    pub at: OffsetDateTime,
    pub audit_seq: i64,
}

/// Checks what [`super::Store::put_research_answer`] refuses before anything is written.
pub(crate) fn check_new_answer(a: &NewResearchAnswer) -> Result<(), super::StoreError> {
    let refuse = |why: String| {
        Err(super::StoreError::Other(anyhow::anyhow!(
            "research answer {} refused: {why}",
            a.id
        )))
    };
    if a.rho_nanos < 0 || a.reserve_nanos < 0 {
        return refuse("a negative rho".into());
    }
    if a.rho_nanos > 0 && a.years.is_empty() {
        return refuse("it charges rho to no data year".into());
    }
    for w in a.years.windows(2) {
        if w[0] >= w[1] {
            return refuse("the years are not ascending without duplicates".into());
        }
    }
    if a.years.iter().any(|y| !super::DATA_YEARS.contains(y)) {
        return refuse("a data year out of range".into());
    }
    Ok(())
}

/// A day as `YYYY-MM-DD`, as both backends keep a project's last day.
static DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

pub(crate) fn format_date(d: Date) -> String {
    d.format(DATE_FORMAT).unwrap_or_default()
}

pub(crate) fn parse_date(s: &str) -> Result<Date, super::StoreError> {
    Date::parse(s, DATE_FORMAT).map_err(|_| {
        super::StoreError::Other(anyhow::anyhow!(
            "the database holds {s:?} where a date (YYYY-MM-DD) belongs"
        ))
    })
}

/// An extract a project asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractRecord {
    pub id: Uuid,
    pub project: String,
    /// The request as sent.
    pub request: serde_json::Value,
    pub requested_by: String,
    pub requested_at: OffsetDateTime,
    /// Approved and built: who approved it, when, and its risk report.
    pub produced: Option<(String, OffsetDateTime, serde_json::Value)>,
}
