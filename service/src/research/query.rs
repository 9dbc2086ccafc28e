//! The research query dialect: one SELECT over the virtual table `trajectories`, parsed by `sqlparser`
//! and resolved against the region's codebook into a typed [`Query`]. Whatever passes here can be
//! answered; everything else is refused with an error that names the offending column, function or
//! clause and where it stands in the SQL.
//!
//! ```sql
//! SELECT target_group, intensity, COUNT(*), AVG(satisfaction),
//!        PROPORTION(end_reason = 'volgens_plan')
//! FROM trajectories
//! WHERE start_year = 2025 AND municipality = 'GM0748'
//! GROUP BY target_group, intensity
//! ```
//!
//! **Dimensions** (group and filter by; their values come from the region file and the record schema,
//! never from the data): `municipality`, `target_group`, `intensity`, `product_category`, `age_band`,
//! `start_year`, `start_quarter`, `start_month`, `end_year`, `end_quarter`, `end_month`,
//! `end_reason`, `respondent`, `instrument`. Quarters are 1..4 and months 1..12 of the year.
//!
//! **Outcomes** (inside measures only): `satisfaction` (grade 1..10), `goal_realisation` (goals
//! achieved of agreed, 0..100%), `carry_on_without_help` (`'yes'`/`'no'`; unknown is NULL),
//! `improved` (reliable change index at most -1.96; true/false).
//!
//! **Measures**: `COUNT(*)` (trajectories), `COUNT(DISTINCT client)` (children), `SUM(x)` and `AVG(x)`
//! of clamped values (`AVG(satisfaction, 4, 10)` states the bounds; by default the codebook's),
//! `PROPORTION(condition)` (the share of the trajectories for which the condition is true, of those
//! for which it is not NULL), `HISTOGRAM(satisfaction)`, `QUANTILE(satisfaction, 0.5)`.
//!
//! **The data window.** The WHERE clause must bound the calendar years the query reads with
//! `start_year` and/or `end_year` (`=`, `IN`, `BETWEEN`, or both a lower and an upper bound) in its
//! top-level AND. The answer reads every trajectory in care in some month of those years and is
//! charged to each of them; of a trajectory that ends after the window, the end columns and the
//! outcomes are NULL (they would be data of later years). Grouped by `start_year` (or `end_year`), the
//! groups are the window's years: a trajectory that started before the window is in none of them
//! (filter on `start_year`, or widen the window, to say which trajectories are meant).
//!
//! Pseudonyms, provider codes and exact values (dates, T-scores, goal counts) are not columns.

use std::fmt;

use kwm_schemas::codes::{AgeBand, EndReason, Respondent};
use kwm_schemas::{MunicipalityCode, RegionConfig};
use sqlparser::ast::{
    BinaryOperator, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, InTarget, ObjectName, ObjectNamePart, SelectFlavor, SelectItem, SetExpr, Spanned,
    Statement, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Location;

/// Longest query text accepted: a query is a line or two, and the parser's work grows with the text.
pub const MAX_SQL_BYTES: usize = 8 * 1024;
/// Most groups an answer may have (the cross product of the grouping columns' values).
pub const MAX_GROUPS: usize = 10_000;
/// Most calendar years one query may read.
pub const MAX_WINDOW_YEARS: u16 = 30;
/// Nesting depth the parser allows (its own recursion guard).
const RECURSION_LIMIT: usize = 40;

/// Where something stands in the query text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn of(loc: Location) -> Self {
        Self {
            line: loc.line,
            column: loc.column,
        }
    }

    fn of_expr(e: &impl Spanned) -> Self {
        Self::of(e.span().start)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("an unknown position")
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

/// Why a query was refused. Every message says what, where, and what would do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is {len} bytes long; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    #[error("the query is not valid SQL: {0}")]
    Syntax(String),
    #[error("one SELECT statement over `trajectories` is expected; {0}")]
    NotOneSelect(String),
    #[error("{what} at {at} is not supported: {hint}")]
    Unsupported {
        what: String,
        at: Position,
        hint: &'static str,
    },
    #[error("table `{name}` at {at} does not exist: the only table is `trajectories`")]
    UnknownTable { name: String, at: Position },
    #[error(
        "column `{name}` at {at} is not a public column; the columns are {}",
        column_list()
    )]
    NotPublic { name: String, at: Position },
    #[error(
        "column `{name}` at {at} is an outcome: use it inside a measure (AVG, SUM, PROPORTION, \
         HISTOGRAM, QUANTILE), not {place}"
    )]
    OutcomeOutsideMeasure {
        name: String,
        at: Position,
        place: &'static str,
    },
    #[error(
        "function `{name}` at {at} is not a measure; the measures are COUNT(*), \
         COUNT(DISTINCT client), SUM(x), AVG(x [, low, high]), PROPORTION(condition), \
         HISTOGRAM(satisfaction) and QUANTILE(satisfaction, p)"
    )]
    UnknownFunction { name: String, at: Position },
    #[error("{function} at {at}: {message}")]
    BadArguments {
        function: String,
        at: Position,
        message: String,
    },
    #[error("{value} at {at} is not a value of `{column}`: {expected}")]
    BadValue {
        column: &'static str,
        value: String,
        at: Position,
        expected: String,
    },
    #[error(
        "column `{name}` at {at} is selected but not in GROUP BY: add it to GROUP BY or drop it"
    )]
    NotGrouped { name: String, at: Position },
    #[error("column `{name}` at {at} is in GROUP BY twice")]
    GroupedTwice { name: String, at: Position },
    #[error("the query asks for no measure: add one, such as COUNT(*)")]
    NoMeasure,
    #[error(
        "the query must bound the calendar years it reads: add `start_year = 2025` (or IN, \
         BETWEEN, or both a lower and an upper bound of start_year or end_year) to the WHERE \
         clause, joined to the rest by AND"
    )]
    NoWindow,
    #[error(
        "`{column}` has no {side} bound in the WHERE clause: the years a query reads must be \
         bounded on both sides (e.g. `{column} BETWEEN 2024 AND 2025`)"
    )]
    OpenWindow {
        column: &'static str,
        side: &'static str,
    },
    #[error("the bounds of `{column}` leave no year: the query would read nothing")]
    EmptyWindow { column: &'static str },
    #[error("the query reads {years} calendar years; at most {max} are allowed")]
    WideWindow { years: u32, max: u16 },
    #[error(
        "the grouping has {groups} groups; at most {max} are allowed: group by fewer or coarser \
         columns, or filter instead"
    )]
    TooManyGroups { groups: u128, max: usize },
}

/// A column one may group and filter by: its values are public (region file, record schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Municipality,
    TargetGroup,
    Intensity,
    ProductCategory,
    AgeBand,
    StartYear,
    StartQuarter,
    StartMonth,
    EndYear,
    EndQuarter,
    EndMonth,
    EndReason,
    Respondent,
    Instrument,
}

/// An outcome field: only inside a measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Grade 1..10.
    Satisfaction,
    /// Goals achieved of agreed, in tenths of a percent (0..=1000).
    GoalRealisation,
    /// 1 yes, 0 no; unknown is NULL.
    CarryOnWithoutHelp,
    /// 1 improved, 0 not.
    Improved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Dim(Dimension),
    Outcome(Outcome),
}

/// The public columns by name, in the order the documentation lists them.
const COLUMNS: &[(&str, Column)] = &[
    ("municipality", Column::Dim(Dimension::Municipality)),
    ("target_group", Column::Dim(Dimension::TargetGroup)),
    ("intensity", Column::Dim(Dimension::Intensity)),
    ("product_category", Column::Dim(Dimension::ProductCategory)),
    ("age_band", Column::Dim(Dimension::AgeBand)),
    ("start_year", Column::Dim(Dimension::StartYear)),
    ("start_quarter", Column::Dim(Dimension::StartQuarter)),
    ("start_month", Column::Dim(Dimension::StartMonth)),
    ("end_year", Column::Dim(Dimension::EndYear)),
    ("end_quarter", Column::Dim(Dimension::EndQuarter)),
    ("end_month", Column::Dim(Dimension::EndMonth)),
    ("end_reason", Column::Dim(Dimension::EndReason)),
    ("respondent", Column::Dim(Dimension::Respondent)),
    ("instrument", Column::Dim(Dimension::Instrument)),
    ("satisfaction", Column::Outcome(Outcome::Satisfaction)),
    (
        "goal_realisation",
        Column::Outcome(Outcome::GoalRealisation),
    ),
    (
        "carry_on_without_help",
        Column::Outcome(Outcome::CarryOnWithoutHelp),
    ),
    ("improved", Column::Outcome(Outcome::Improved)),
];

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Column {
    pub fn name(self) -> &'static str {
        COLUMNS
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("?", |(n, _)| *n)
    }

    fn by_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        COLUMNS.iter().find(|(n, _)| *n == lower).map(|(_, c)| *c)
    }

    /// Whether `<`, `<=`, `>` and `>=` mean something for it.
    fn ordered(self) -> bool {
        matches!(
            self,
            Column::Dim(
                Dimension::Intensity
                    | Dimension::ProductCategory
                    | Dimension::StartYear
                    | Dimension::StartQuarter
                    | Dimension::StartMonth
                    | Dimension::EndYear
                    | Dimension::EndQuarter
                    | Dimension::EndMonth
            ) | Column::Outcome(Outcome::Satisfaction | Outcome::GoalRealisation)
        )
    }
}

impl Dimension {
    pub fn name(self) -> &'static str {
        Column::Dim(self).name()
    }
}

/// The calendar years a query reads (DESIGN section 7: it is charged to each of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first_year: u16,
    pub last_year: u16,
}

impl Window {
    /// Month indexes ([`kwm_schemas::Month::index`]) of its first and last month.
    pub fn months(self) -> (i32, i32) {
        (
            i32::from(self.first_year) * 12,
            i32::from(self.last_year) * 12 + 11,
        )
    }

    pub fn years(self) -> impl Iterator<Item = u16> {
        self.first_year..=self.last_year
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    fn holds(self, a: i32, b: i32) -> bool {
        match self {
            Self::Eq => a == b,
            Self::NotEq => a != b,
            Self::Lt => a < b,
            Self::LtEq => a <= b,
            Self::Gt => a > b,
            Self::GtEq => a >= b,
        }
    }

    fn flipped(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::LtEq => Self::GtEq,
            Self::Gt => Self::Lt,
            Self::GtEq => Self::LtEq,
            other => other,
        }
    }
}

/// A condition on one trajectory, in SQL's three-valued logic (`None` is NULL). Values are the
/// columns' codes ([`super::answer`] reads them from the row the same way).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Predicate {
    Compare {
        column: Column,
        op: CmpOp,
        value: i32,
    },
    In {
        column: Column,
        values: Vec<i32>,
        negated: bool,
    },
    IsNull {
        column: Column,
        negated: bool,
    },
    /// A true/false outcome used as a condition (`improved`).
    Truth(Column),
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
}

impl Predicate {
    /// The condition on a trajectory whose column values `value` gives.
    pub fn eval(&self, value: &impl Fn(Column) -> Option<i32>) -> Option<bool> {
        match self {
            Self::Compare {
                column,
                op,
                value: v,
            } => value(*column).map(|x| op.holds(x, *v)),
            Self::In {
                column,
                values,
                negated,
            } => value(*column).map(|x| values.contains(&x) != *negated),
            Self::IsNull { column, negated } => Some(value(*column).is_none() != *negated),
            Self::Truth(column) => value(*column).map(|x| x != 0),
            Self::And(a, b) => match (a.eval(value), b.eval(value)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Self::Or(a, b) => match (a.eval(value), b.eval(value)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Self::Not(a) => a.eval(value).map(|b| !b),
        }
    }

    fn conjuncts<'a>(&'a self, out: &mut Vec<&'a Predicate>) {
        match self {
            Self::And(a, b) => {
                a.conjuncts(out);
                b.conjuncts(out);
            }
            other => out.push(other),
        }
    }
}

/// An outcome that can be summed and averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Numeric {
    Satisfaction,
    GoalRealisation,
}

impl Numeric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Satisfaction => "satisfaction",
            Self::GoalRealisation => "goal_realisation",
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Self::Satisfaction => Outcome::Satisfaction,
            Self::GoalRealisation => Outcome::GoalRealisation,
        }
    }

    /// The codebook's range, in the unit bounds are written in (grade points, whole percents).
    pub fn range(self) -> (i32, i32) {
        match self {
            Self::Satisfaction => (1, 10),
            Self::GoalRealisation => (0, 100),
        }
    }
}

/// Clamping bounds of a sum or mean, in the unit they are written in (grade points, whole percents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bounds {
    pub low: i32,
    pub high: i32,
}

/// What one column of the SELECT list asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measure {
    /// COUNT(*): trajectories.
    Trajectories,
    /// COUNT(DISTINCT client): children.
    Children,
    Sum(Numeric, Bounds),
    Avg(Numeric, Bounds),
    Proportion(Predicate),
    /// HISTOGRAM(satisfaction): the grades 1..10.
    Histogram,
    /// QUANTILE(satisfaction, p), p in thousandths (0..=1000).
    Quantile {
        permille: u32,
    },
}

/// A parsed research query: resolved against the region's codebook, so that it can be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    text: String,
    window: Window,
    filter: Option<Predicate>,
    group_by: Vec<Dimension>,
    measures: Vec<(String, Measure)>,
}

impl Query {
    /// Parses `sql` against `region`'s codebook.
    pub fn parse(sql: &str, region: &RegionConfig) -> Result<Self, QueryError> {
        if sql.len() > MAX_SQL_BYTES {
            return Err(QueryError::TooLong {
                len: sql.len(),
                max: MAX_SQL_BYTES,
            });
        }
        let dialect = GenericDialect {};
        let statements = Parser::new(&dialect)
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
            .map_err(|e| QueryError::Syntax(e.to_string()))?;
        let [statement] = statements.as_slice() else {
            return Err(QueryError::NotOneSelect(format!(
                "found {} statements",
                statements.len()
            )));
        };
        let Statement::Query(query) = statement else {
            return Err(QueryError::NotOneSelect(
                "found a statement that is not a query".into(),
            ));
        };
        Resolver { region }.query(statement.to_string(), query)
    }

    /// The query as read (normalised SQL).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn window(&self) -> Window {
        self.window
    }

    pub fn filter(&self) -> Option<&Predicate> {
        self.filter.as_ref()
    }

    pub fn group_by(&self) -> &[Dimension] {
        &self.group_by
    }

    /// The measures in SELECT order, each with its name (its alias, else its normalised SQL).
    pub fn measures(&self) -> &[(String, Measure)] {
        &self.measures
    }
}

struct Resolver<'a> {
    region: &'a RegionConfig,
}

fn unsupported(what: impl Into<String>, at: Position, hint: &'static str) -> QueryError {
    QueryError::Unsupported {
        what: what.into(),
        at,
        hint,
    }
}

const NO_CLAUSE: &str =
    "a research query is SELECT ... FROM trajectories [WHERE ...] [GROUP BY ...]";

impl Resolver<'_> {
    fn query(&self, text: String, q: &sqlparser::ast::Query) -> Result<Query, QueryError> {
        let start = Position::of_expr(q);
        let extra = [
            ("WITH", q.with.is_some()),
            ("ORDER BY", q.order_by.is_some()),
            ("LIMIT", q.limit_clause.is_some()),
            ("FETCH", q.fetch.is_some()),
            ("a locking clause", !q.locks.is_empty()),
            ("FOR", q.for_clause.is_some()),
            ("SETTINGS", q.settings.is_some()),
            ("FORMAT", q.format_clause.is_some()),
            ("a pipe operator", !q.pipe_operators.is_empty()),
        ];
        if let Some((what, _)) = extra.iter().find(|(_, present)| *present) {
            return Err(unsupported(*what, start, NO_CLAUSE));
        }
        let SetExpr::Select(select) = q.body.as_ref() else {
            return Err(QueryError::NotOneSelect(
                "found a set operation or a nested query".into(),
            ));
        };
        let s = select.as_ref();
        let at = Position::of(s.select_token.0.span.start);
        let extra = [
            ("DISTINCT", s.distinct.is_some()),
            ("TOP", s.top.is_some()),
            ("INTO", s.into.is_some()),
            ("LATERAL VIEW", !s.lateral_views.is_empty()),
            ("PREWHERE", s.prewhere.is_some()),
            ("CONNECT BY", !s.connect_by.is_empty()),
            ("CLUSTER BY", !s.cluster_by.is_empty()),
            ("DISTRIBUTE BY", !s.distribute_by.is_empty()),
            ("SORT BY", !s.sort_by.is_empty()),
            ("HAVING", s.having.is_some()),
            ("WINDOW", !s.named_window.is_empty()),
            ("QUALIFY", s.qualify.is_some()),
            ("SELECT AS", s.value_table_mode.is_some()),
            ("EXCLUDE", s.exclude.is_some()),
            ("a SELECT modifier", s.select_modifiers.is_some()),
            ("an optimizer hint", !s.optimizer_hints.is_empty()),
            ("FROM first", s.flavor != SelectFlavor::Standard),
        ];
        if let Some((what, _)) = extra.iter().find(|(_, present)| *present) {
            return Err(unsupported(*what, at, NO_CLAUSE));
        }
        self.from(&s.from, at)?;

        // In the order of the text, so that the first error is the first one a reader meets.
        let mut selected = Vec::new();
        let mut measures = Vec::new();
        for item in &s.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                other => {
                    return Err(unsupported(
                        format!("`{other}`"),
                        Position::of_expr(other),
                        "select grouping columns and measures by name; there is no `*`",
                    ))
                }
            };
            if let Expr::Function(_) = expr {
                let measure = self.measure(expr)?;
                measures.push((alias.unwrap_or_else(|| expr.to_string()), measure));
            } else {
                selected.push(self.dimension(expr, "in SELECT")?);
            }
        }
        let filter = s
            .selection
            .as_ref()
            .map(|e| self.predicate(e, "in WHERE"))
            .transpose()?;
        let window = window_of(filter.as_ref())?;

        let group_by = match &s.group_by {
            GroupByExpr::Expressions(exprs, modifiers) => {
                if let Some(m) = modifiers.first() {
                    return Err(unsupported(
                        format!("GROUP BY {m}"),
                        at,
                        "group by plain columns",
                    ));
                }
                let mut dims: Vec<Dimension> = Vec::with_capacity(exprs.len());
                for e in exprs {
                    let (dim, name, at) = self.dimension(e, "in GROUP BY")?;
                    if dims.contains(&dim) {
                        return Err(QueryError::GroupedTwice { name, at });
                    }
                    dims.push(dim);
                }
                dims
            }
            GroupByExpr::All(_) => {
                return Err(unsupported(
                    "GROUP BY ALL",
                    at,
                    "name the columns to group by",
                ))
            }
        };

        if let Some((_, name, at)) = selected.iter().find(|(d, _, _)| !group_by.contains(d)) {
            return Err(QueryError::NotGrouped {
                name: name.clone(),
                at: *at,
            });
        }
        if measures.is_empty() {
            return Err(QueryError::NoMeasure);
        }
        let groups = group_by.iter().try_fold(1u128, |acc, d| {
            acc.checked_mul(level_count(*d, self.region, window) as u128)
        });
        match groups {
            Some(n) if n <= MAX_GROUPS as u128 => {}
            other => {
                return Err(QueryError::TooManyGroups {
                    groups: other.unwrap_or(u128::MAX),
                    max: MAX_GROUPS,
                })
            }
        }
        Ok(Query {
            text,
            window,
            filter,
            group_by,
            measures,
        })
    }

    fn from(
        &self,
        from: &[sqlparser::ast::TableWithJoins],
        at: Position,
    ) -> Result<(), QueryError> {
        let [table] = from else {
            return Err(unsupported(
                if from.is_empty() {
                    "a SELECT without FROM"
                } else {
                    "more than one table"
                },
                at,
                "the query reads FROM trajectories",
            ));
        };
        if let Some(join) = table.joins.first() {
            return Err(unsupported(
                "JOIN",
                Position::of_expr(&join.relation),
                "there is one table, `trajectories`",
            ));
        }
        match &table.relation {
            TableFactor::Table { name, .. } => {
                let at = Position::of_expr(name);
                if !name.to_string().eq_ignore_ascii_case("trajectories") {
                    return Err(QueryError::UnknownTable {
                        name: name.to_string(),
                        at,
                    });
                }
                // An alias, hints, a sample or any other modifier shows in the table's rendering.
                if table.relation.to_string() != name.to_string() {
                    return Err(unsupported(
                        "an alias or modifier of the table",
                        at,
                        "write FROM trajectories",
                    ));
                }
                Ok(())
            }
            other => Err(unsupported(
                format!("`{other}`"),
                Position::of_expr(other),
                "the query reads FROM trajectories",
            )),
        }
    }

    /// A column named by an identifier.
    fn column(&self, e: &Expr) -> Result<Option<(Column, String, Position)>, QueryError> {
        let ident = match e {
            Expr::Identifier(i) => i,
            Expr::CompoundIdentifier(_) => {
                return Err(unsupported(
                    format!("`{e}`"),
                    Position::of_expr(e),
                    "name columns without a table (`municipality`, not `t.municipality`)",
                ))
            }
            Expr::Nested(inner) => return self.column(inner),
            _ => return Ok(None),
        };
        let at = Position::of(ident.span.start);
        match Column::by_name(&ident.value) {
            Some(c) => Ok(Some((c, ident.value.to_ascii_lowercase(), at))),
            None => Err(QueryError::NotPublic {
                name: ident.value.clone(),
                at,
            }),
        }
    }

    fn dimension(
        &self,
        e: &Expr,
        place: &'static str,
    ) -> Result<(Dimension, String, Position), QueryError> {
        match self.column(e)? {
            Some((Column::Dim(d), name, at)) => Ok((d, name, at)),
            Some((Column::Outcome(_), name, at)) => {
                Err(QueryError::OutcomeOutsideMeasure { name, at, place })
            }
            None => Err(unsupported(
                format!("`{e}`"),
                Position::of_expr(e),
                "group by and select plain columns, and measures",
            )),
        }
    }

    /// A condition; outcomes are allowed only inside a measure (`place` says where we are).
    fn predicate(&self, e: &Expr, place: &'static str) -> Result<Predicate, QueryError> {
        let outcomes = place == "in a measure";
        let col = |e: &Expr| -> Result<Option<(Column, String, Position)>, QueryError> {
            match self.column(e)? {
                Some((Column::Outcome(_), name, at)) if !outcomes => {
                    Err(QueryError::OutcomeOutsideMeasure { name, at, place })
                }
                other => Ok(other),
            }
        };
        let need_col = |e: &Expr| -> Result<(Column, String, Position), QueryError> {
            col(e)?.ok_or_else(|| {
                unsupported(
                    format!("`{e}`"),
                    Position::of_expr(e),
                    "a condition compares a column with a value",
                )
            })
        };
        match e {
            Expr::Nested(inner) => self.predicate(inner, place),
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::And => {
                        return Ok(Predicate::And(
                            Box::new(self.predicate(left, place)?),
                            Box::new(self.predicate(right, place)?),
                        ))
                    }
                    BinaryOperator::Or => {
                        return Ok(Predicate::Or(
                            Box::new(self.predicate(left, place)?),
                            Box::new(self.predicate(right, place)?),
                        ))
                    }
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::NotEq,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::LtEq,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::GtEq,
                    other => return Err(unsupported(
                        format!("the operator `{other}`"),
                        Position::of_expr(e),
                        "conditions use =, <>, <, <=, >, >=, IN, BETWEEN, IS NULL, AND, OR, NOT",
                    )),
                };
                let (column, name, at, literal, op) = match (col(left)?, col(right)?) {
                    (Some((c, n, a)), None) => (c, n, a, right.as_ref(), cmp),
                    (None, Some((c, n, a))) => (c, n, a, left.as_ref(), cmp.flipped()),
                    _ => {
                        return Err(unsupported(
                            format!("`{e}`"),
                            Position::of_expr(e),
                            "a comparison has a column on one side and a value on the other",
                        ))
                    }
                };
                if !matches!(op, CmpOp::Eq | CmpOp::NotEq) && !column.ordered() {
                    return Err(unsupported(
                        format!("`{e}`"),
                        at,
                        "this column's values have no order: use =, <> or IN",
                    ));
                }
                let _ = name;
                Ok(Predicate::Compare {
                    column,
                    op,
                    value: self.literal(column, literal)?,
                })
            }
            Expr::In {
                expr,
                target,
                negated,
                ..
            } => {
                let (column, _, _) = need_col(expr)?;
                let InTarget::List(list) = target else {
                    return Err(unsupported(
                        format!("`{e}`"),
                        Position::of_expr(e),
                        "IN takes a list of values",
                    ));
                };
                let values = list
                    .iter()
                    .map(|v| self.literal(column, v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Predicate::In {
                    column,
                    values,
                    negated: *negated,
                })
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (column, _, at) = need_col(expr)?;
                if !column.ordered() {
                    return Err(unsupported(
                        format!("`{e}`"),
                        at,
                        "this column's values have no order: use =, <> or IN",
                    ));
                }
                let between = Predicate::And(
                    Box::new(Predicate::Compare {
                        column,
                        op: CmpOp::GtEq,
                        value: self.literal(column, low)?,
                    }),
                    Box::new(Predicate::Compare {
                        column,
                        op: CmpOp::LtEq,
                        value: self.literal(column, high)?,
                    }),
                );
                Ok(if *negated {
                    Predicate::Not(Box::new(between))
                } else {
                    between
                })
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => Ok(Predicate::IsNull {
                column: need_col(inner)?.0,
                negated: matches!(e, Expr::IsNotNull(_)),
            }),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Predicate::Not(Box::new(self.predicate(expr, place)?))),
            Expr::Identifier(_) => {
                let (column, name, at) = need_col(e)?;
                if column == Column::Outcome(Outcome::Improved) {
                    Ok(Predicate::Truth(column))
                } else {
                    Err(unsupported(
                        format!("the column `{name}` alone"),
                        at,
                        "only `improved` is a condition by itself; compare the others with a value",
                    ))
                }
            }
            other => Err(unsupported(
                format!("`{other}`"),
                Position::of_expr(other),
                "conditions use =, <>, <, <=, >, >=, IN, BETWEEN, IS NULL, AND, OR, NOT",
            )),
        }
    }

    /// A literal as the code of `column`'s values.
    fn literal(&self, column: Column, e: &Expr) -> Result<i32, QueryError> {
        let at = Position::of_expr(e);
        let (text, is_string) = match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => (n.clone(), false),
                Value::SingleQuotedString(s) => (s.clone(), true),
                Value::Boolean(b) => (b.to_string(), false),
                Value::Null => {
                    return Err(QueryError::BadValue {
                        column: column.name(),
                        value: "NULL".into(),
                        at,
                        expected: "compare with IS NULL or IS NOT NULL".into(),
                    })
                }
                other => (other.to_string(), false),
            },
            Expr::Nested(inner) => return self.literal(column, inner),
            other => {
                return Err(unsupported(
                    format!("`{other}`"),
                    at,
                    "compare with a literal value (a number or a 'quoted' code)",
                ))
            }
        };
        let shown = if is_string {
            format!("'{text}'")
        } else {
            text.clone()
        };
        let bad = |expected: String| QueryError::BadValue {
            column: column.name(),
            value: shown.clone(),
            at,
            expected,
        };
        let int_in = |lo: i32, hi: i32| -> Result<i32, QueryError> {
            text.trim()
                .parse::<i32>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| bad(format!("a whole number from {lo} to {hi}")))
        };
        let position = |codes: Vec<String>, what: &str| -> Result<i32, QueryError> {
            let t = text.trim();
            codes
                .iter()
                .position(|c| c.eq_ignore_ascii_case(t))
                .map(|p| p as i32)
                .ok_or_else(|| bad(format!("{what}: {}", codes.join(", "))))
        };
        let region = self.region;
        match column {
            Column::Dim(Dimension::Municipality) => {
                let code: Option<MunicipalityCode> = text.parse().ok();
                code.and_then(|c| region.municipalities.iter().position(|m| m.code == c))
                    .map(|p| p as i32)
                    .ok_or_else(|| {
                        bad(format!(
                            "a municipality of region {}: {}",
                            region.code,
                            region
                                .municipalities
                                .iter()
                                .map(|m| m.code.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            }
            Column::Dim(Dimension::TargetGroup) => position(
                region
                    .target_groups
                    .iter()
                    .map(|t| t.code.to_string())
                    .collect(),
                &format!("a target group of region {}", region.code),
            ),
            Column::Dim(Dimension::Instrument) => position(
                region
                    .instruments
                    .iter()
                    .map(|t| t.code.to_string())
                    .collect(),
                &format!("an instrument of region {}", region.code),
            ),
            Column::Dim(Dimension::Intensity) => int_in(1, 4),
            Column::Dim(Dimension::ProductCategory) => int_in(40, 55),
            Column::Dim(Dimension::AgeBand) => position(
                AgeBand::ALL
                    .iter()
                    .map(|a| a.as_str().to_string())
                    .collect(),
                "an age band",
            ),
            Column::Dim(Dimension::StartYear | Dimension::EndYear) => int_in(1900, 2999),
            Column::Dim(Dimension::StartQuarter | Dimension::EndQuarter) => int_in(1, 4),
            Column::Dim(Dimension::StartMonth | Dimension::EndMonth) => int_in(1, 12),
            Column::Dim(Dimension::EndReason) => {
                let t = text.trim().to_ascii_lowercase();
                let code = match t.as_str() {
                    "volgens_plan" => Some(EndReason::ACCORDING_TO_PLAN.code()),
                    "uitval" => Some(EndReason::EARLY_BY_CLIENT.code()),
                    _ => t.parse::<u8>().ok(),
                };
                code.and_then(|c| EndReason::CODES.iter().position(|x| *x == c))
                    .map(|p| p as i32)
                    .ok_or_else(|| {
                        bad(
                            "an iJw JZ588 code ('02', '20', '31' .. '39') or 'volgens_plan' (31) \
                             or 'uitval' (32)"
                                .into(),
                        )
                    })
            }
            Column::Dim(Dimension::Respondent) => position(
                Respondent::ALL
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
                "a respondent",
            ),
            Column::Outcome(Outcome::Satisfaction) => int_in(1, 10),
            Column::Outcome(Outcome::GoalRealisation) => {
                // Percent with at most one decimal, as tenths of a percent.
                let t = text.trim();
                let (int, frac) = t.split_once('.').unwrap_or((t, ""));
                let ok = !int.is_empty()
                    && int.bytes().all(|b| b.is_ascii_digit())
                    && frac.len() <= 1
                    && frac.bytes().all(|b| b.is_ascii_digit());
                let tenths = ok
                    .then(|| Some(int.parse::<i32>().ok()? * 10 + frac.parse::<i32>().unwrap_or(0)))
                    .flatten()
                    .filter(|v| (0..=1000).contains(v));
                tenths.ok_or_else(|| bad("a percentage from 0 to 100, at most one decimal".into()))
            }
            Column::Outcome(Outcome::CarryOnWithoutHelp) => match t_lower(&text).as_str() {
                "yes" | "true" => Ok(1),
                "no" | "false" => Ok(0),
                _ => Err(bad("'yes' or 'no' (unknown is NULL: use IS NULL)".into())),
            },
            Column::Outcome(Outcome::Improved) => match t_lower(&text).as_str() {
                "true" => Ok(1),
                "false" => Ok(0),
                _ => Err(bad("true or false".into())),
            },
        }
    }

    fn measure(&self, e: &Expr) -> Result<Measure, QueryError> {
        let Expr::Function(f) = e else {
            unreachable!("called on functions only")
        };
        let at = Position::of_expr(e);
        let name = function_name(&f.name);
        let upper = name.to_ascii_uppercase();
        let shown = format!("`{upper}`");
        if f.uses_odbc_syntax
            || !matches!(f.parameters, FunctionArguments::None)
            || !f.within_group.is_empty()
            || f.filter.is_some()
            || f.null_treatment.is_some()
            || f.over.is_some()
        {
            return Err(unsupported(
                format!("`{e}`"),
                at,
                "a measure takes its arguments in parentheses, without FILTER, OVER or WITHIN GROUP",
            ));
        }
        let known = ["COUNT", "SUM", "AVG", "PROPORTION", "HISTOGRAM", "QUANTILE"];
        if !known.contains(&upper.as_str()) {
            return Err(QueryError::UnknownFunction {
                name: name.clone(),
                at,
            });
        }
        let bad = |message: &str| QueryError::BadArguments {
            function: shown.clone(),
            at,
            message: message.to_string(),
        };
        let FunctionArguments::List(list) = &f.args else {
            return Err(bad("arguments in parentheses are expected"));
        };
        if !list.clauses.is_empty() {
            return Err(bad("takes no ORDER BY, LIMIT or other clause"));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        if distinct && upper != "COUNT" {
            return Err(bad("DISTINCT is for COUNT(DISTINCT client) only"));
        }
        let mut args: Vec<Option<&Expr>> = Vec::with_capacity(list.args.len());
        for a in &list.args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => args.push(Some(x)),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => args.push(None),
                _ => return Err(bad("takes plain arguments")),
            }
        }
        let numeric = |a: Option<&Expr>| -> Result<Numeric, QueryError> {
            let Some(a) = a else {
                return Err(bad("takes an outcome column, not `*`"));
            };
            match self.column(a)? {
                Some((Column::Outcome(Outcome::Satisfaction), _, _)) => Ok(Numeric::Satisfaction),
                Some((Column::Outcome(Outcome::GoalRealisation), _, _)) => {
                    Ok(Numeric::GoalRealisation)
                }
                _ => Err(bad(
                    "takes `satisfaction` or `goal_realisation` (sums and means of clamped values)",
                )),
            }
        };
        match (upper.as_str(), args.as_slice()) {
            ("COUNT", [None]) if !distinct => Ok(Measure::Trajectories),
            ("COUNT", [Some(x)]) if distinct => match self.client(x) {
                true => Ok(Measure::Children),
                false => Err(bad(
                    "counts trajectories, COUNT(*), or children, COUNT(DISTINCT client)",
                )),
            },
            ("COUNT", _) => Err(bad(
                "counts trajectories, COUNT(*), or children, COUNT(DISTINCT client)",
            )),
            ("SUM" | "AVG", [x, rest @ ..]) if rest.is_empty() || rest.len() == 2 => {
                let n = numeric(*x)?;
                let (lo, hi) = n.range();
                let bounds = match rest {
                    [Some(l), Some(h)] => {
                        let l = self.bound(l, n, &bad)?;
                        let h = self.bound(h, n, &bad)?;
                        if l >= h {
                            return Err(bad("the lower bound must be below the upper bound"));
                        }
                        Bounds { low: l, high: h }
                    }
                    [] => Bounds { low: lo, high: hi },
                    _ => return Err(bad("bounds are two numbers")),
                };
                Ok(if upper == "SUM" {
                    Measure::Sum(n, bounds)
                } else {
                    Measure::Avg(n, bounds)
                })
            }
            ("SUM" | "AVG", _) => Err(bad(
                "takes an outcome and optionally its clamping bounds: AVG(satisfaction, 4, 10)",
            )),
            ("PROPORTION", [Some(cond)]) => {
                Ok(Measure::Proportion(self.predicate(cond, "in a measure")?))
            }
            ("PROPORTION", _) => Err(bad(
                "takes one condition, e.g. PROPORTION(satisfaction >= 8)",
            )),
            ("HISTOGRAM", [x]) => match numeric(*x)? {
                Numeric::Satisfaction => Ok(Measure::Histogram),
                Numeric::GoalRealisation => Err(bad("is of the grade `satisfaction` (1..10)")),
            },
            ("HISTOGRAM", _) => Err(bad("takes one column: HISTOGRAM(satisfaction)")),
            ("QUANTILE", [x, Some(p)]) => {
                if numeric(*x)? != Numeric::Satisfaction {
                    return Err(bad("is of the grade `satisfaction` (1..10)"));
                }
                let permille = probability(p)
                    .ok_or_else(|| bad("p is a number from 0 to 1 with at most three decimals"))?;
                Ok(Measure::Quantile { permille })
            }
            (_, _) => Err(bad("takes a column and p: QUANTILE(satisfaction, 0.5)")),
        }
    }

    /// Whether `e` is the column `client` (the only use of a pseudonym: counting children).
    fn client(&self, e: &Expr) -> bool {
        matches!(e, Expr::Identifier(i) if i.value.eq_ignore_ascii_case("client"))
    }

    fn bound(
        &self,
        e: &Expr,
        n: Numeric,
        bad: &dyn Fn(&str) -> QueryError,
    ) -> Result<i32, QueryError> {
        let (lo, hi) = n.range();
        let v = match e {
            Expr::Value(v) => match &v.value {
                Value::Number(t, _) => t.parse::<i32>().ok(),
                _ => None,
            },
            _ => None,
        };
        v.filter(|v| (lo..=hi).contains(v)).ok_or_else(|| {
            bad(&format!(
                "bounds of {} are whole numbers from {lo} to {hi}",
                n.name()
            ))
        })
    }
}

fn t_lower(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn function_name(name: &ObjectName) -> String {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => i.value.clone(),
        _ => name.to_string(),
    }
}

/// A probability literal 0..=1 with at most three decimals, in thousandths.
fn probability(e: &Expr) -> Option<u32> {
    let Expr::Value(v) = e else { return None };
    let Value::Number(t, _) = &v.value else {
        return None;
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if frac.len() > 3 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u32 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u32 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().ok()? * 10u32.pow(3 - frac.len() as u32)
    };
    let p = int.checked_mul(1000)?.checked_add(frac)?;
    (p <= 1000).then_some(p)
}

/// The years the top-level AND of the filter bounds `start_year` and `end_year` to; the window is
/// the smallest range of years that holds both.
fn window_of(filter: Option<&Predicate>) -> Result<Window, QueryError> {
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        f.conjuncts(&mut conjuncts);
    }
    let mut ranges: Vec<(i32, i32)> = Vec::new();
    for (dim, name) in [
        (Dimension::StartYear, "start_year"),
        (Dimension::EndYear, "end_year"),
    ] {
        let column = Column::Dim(dim);
        let (mut lo, mut hi): (Option<i32>, Option<i32>) = (None, None);
        let mut seen = false;
        let mut raise = |v: i32| lo = Some(lo.map_or(v, |l: i32| l.max(v)));
        let mut lower = |v: i32| hi = Some(hi.map_or(v, |h: i32| h.min(v)));
        for c in &conjuncts {
            match c {
                Predicate::Compare {
                    column: col,
                    op,
                    value,
                } if *col == column => {
                    seen = true;
                    match op {
                        CmpOp::Eq => {
                            raise(*value);
                            lower(*value);
                        }
                        CmpOp::Gt => raise(value + 1),
                        CmpOp::GtEq => raise(*value),
                        CmpOp::Lt => lower(value - 1),
                        CmpOp::LtEq => lower(*value),
                        CmpOp::NotEq => {}
                    }
                }
                Predicate::In {
                    column: col,
                    values,
                    negated: false,
                } if *col == column => {
                    seen = true;
                    match (values.iter().min(), values.iter().max()) {
                        (Some(a), Some(b)) => {
                            raise(*a);
                            lower(*b);
                        }
                        // IN () holds for no row.
                        _ => {
                            raise(1);
                            lower(0);
                        }
                    }
                }
                _ => {}
            }
        }
        if !seen {
            continue;
        }
        match (lo, hi) {
            (Some(l), Some(h)) if l <= h => ranges.push((l, h)),
            (Some(_), Some(_)) => return Err(QueryError::EmptyWindow { column: name }),
            (None, _) => {
                return Err(QueryError::OpenWindow {
                    column: name,
                    side: "lower",
                })
            }
            (_, None) => {
                return Err(QueryError::OpenWindow {
                    column: name,
                    side: "upper",
                })
            }
        }
    }
    let (Some(first), Some(last)) = (
        ranges.iter().map(|r| r.0).min(),
        ranges.iter().map(|r| r.1).max(),
    ) else {
        return Err(QueryError::NoWindow);
    };
    let years = (last - first + 1) as u32;
    if years > u32::from(MAX_WINDOW_YEARS) {
        return Err(QueryError::WideWindow {
            years,
            max: MAX_WINDOW_YEARS,
        });
    }
    Ok(Window {
        first_year: first as u16,
        last_year: last as u16,
    })
}

/// The values a grouping column takes, whatever the data: the codes `base .. base + size`, then NULL
/// when the column can be NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub base: i32,
    pub size: usize,
    pub nullable: bool,
}

impl Levels {
    pub fn count(self) -> usize {
        self.size + usize::from(self.nullable)
    }

    /// The level of a value, `None` for a value outside the levels (not in any group).
    pub fn index(self, v: Option<i32>) -> Option<usize> {
        match v {
            None => self.nullable.then_some(self.size),
            Some(x) => {
                let i = x.checked_sub(self.base)?;
                (0..self.size as i32).contains(&i).then_some(i as usize)
            }
        }
    }
}

pub fn levels(d: Dimension, region: &RegionConfig, window: Window) -> Levels {
    let years = usize::from(window.last_year - window.first_year) + 1;
    let (base, size, nullable) = match d {
        Dimension::Municipality => (0, region.municipalities.len(), false),
        Dimension::TargetGroup => (0, region.target_groups.len(), false),
        Dimension::Intensity => (1, 4, true),
        Dimension::ProductCategory => (40, 16, true),
        Dimension::AgeBand => (0, AgeBand::ALL.len(), false),
        Dimension::StartYear => (i32::from(window.first_year), years, false),
        Dimension::EndYear => (i32::from(window.first_year), years, true),
        Dimension::StartQuarter => (1, 4, false),
        Dimension::EndQuarter => (1, 4, true),
        Dimension::StartMonth => (1, 12, false),
        Dimension::EndMonth => (1, 12, true),
        Dimension::EndReason => (0, EndReason::CODES.len(), true),
        Dimension::Respondent => (0, Respondent::ALL.len(), true),
        Dimension::Instrument => (0, region.instruments.len(), true),
    };
    Levels {
        base,
        size,
        nullable,
    }
}

fn level_count(d: Dimension, region: &RegionConfig, window: Window) -> usize {
    levels(d, region, window).count()
}

/// How a level of a grouping column is shown in an answer (`None`: NULL).
pub fn level_label(
    d: Dimension,
    region: &RegionConfig,
    window: Window,
    level: usize,
) -> Option<String> {
    let l = levels(d, region, window);
    if level >= l.size {
        return None;
    }
    let code = l.base + level as i32;
    Some(match d {
        Dimension::Municipality => region.municipalities[level].code.to_string(),
        Dimension::TargetGroup => region.target_groups[level].code.to_string(),
        Dimension::Instrument => region.instruments[level].code.to_string(),
        Dimension::AgeBand => AgeBand::ALL[level].as_str().to_string(),
        Dimension::EndReason => format!("{:02}", EndReason::CODES[level]),
        Dimension::Respondent => Respondent::ALL[level].as_str().to_string(),
        _ => code.to_string(),
    })
}
