//! The Kwaliteitsmonitor custodian service: sealed ingestion, the store, the releases and the API.
//!
//! Rooms, from the outside in (each may use the rooms below it, never one above; a test,
//! `service/tests/layout.rs`, checks the imports):
//! - composition roots: `main`, `cli` (the operator's commands), `demo`: the only places that may
//!   put the whole application together with `http`.
//! - `http/`: router and start-up, routes, auth extractors, middleware, the problem mapping, OpenAPI.
//! - `app/`: the use cases (upload, custody, rounds, research, the operator's commands, the audit
//!   trail, access by token).
//! - the parts: `store/` (all SQL, SQLite and PostgreSQL), `keys` (the HPKE keyring and the
//!   pseudonymisation key, in the database under the master key), `index` (the release index in
//!   memory), `clock` (the one clock, injected), `metrics`, `config`, `telemetry`.
//! - the pure core: `release/` (the release engine), `research/` (differentially private research
//!   queries), `extract/` (anonymised research extracts: hierarchies, the lattice search, risk
//!   report, CSV), `noise/` (exact samplers), `audit` (the hash chain), `tables` (CSV and XLSX of
//!   releases). It takes data and returns data.

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod extract;
pub mod http;
pub mod index;
pub mod keys;
pub mod metrics;
pub mod noise;
pub mod release;
pub mod research;
pub mod store;
pub mod tables;
pub mod telemetry;

pub use config::Config;
pub use http::startup::{AppState, Application};
