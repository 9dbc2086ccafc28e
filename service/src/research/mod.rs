//! Research access, the pure core (DESIGN section 7, "Research"; issue 12): differentially private
//! answers to queries in a small SQL dialect over the virtual table `trajectories`, computed from the
//! release index's shards with the release engine's bounding, noise, thresholds, intervals and
//! publication rule. Nothing here touches the database, HTTP, projects or budgets: the caller parses
//! the query, checks and charges the budget, and stores what comes out.
//!
//! Where things are: `query` (the dialect: parsed with `sqlparser`, resolved against the region's
//! codebook into a typed [`Query`]), `answer` (bounding, the one noisy measurement of every group,
//! figures and statuses; and [`estimate`], a query's cost and interval widths before anything is
//! spent).

mod answer;
pub mod query;
#[cfg(test)]
mod tests;

pub use answer::{answer, estimate, ResearchError, ResearchInput};
pub use query::{Query, QueryError};
