//! The Kwaliteitsmonitor custodian service: sealed ingestion, the store, and the API.
//!
//! Where things are: `routes/` (HTTP endpoints and the OpenAPI document), `auth/` (tokens, roles,
//! scopes), `ingest` (where an upload is opened and validated), `keys` (the HPKE keyring and the service
//! pseudonymisation key, kept in the database under the master key), `store/` (all SQL, SQLite and PostgreSQL), `metrics`, `config`, `startup`.

pub mod audit;
pub mod audit_trail;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod extract;
pub mod index;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod noise;
pub mod release;
pub mod rounds;
pub mod routes;
pub mod server;
pub mod startup;
pub mod store;
pub mod tables;
pub mod telemetry;

pub use config::Config;
pub use startup::{AppState, Application};
