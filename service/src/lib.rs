//! The Kwaliteitsmonitor custodian service: sealed ingestion, the store, and the API.

pub mod store;
