//! End-to-end tests: the real service on port 0 with a fresh database, driven over real HTTP by the real
//! SDK. One binary, modules by theme.

mod api;
mod audit;
mod authz;
mod batches;
mod custody;
mod hardening;
mod helpers;
mod limits;
mod metrics;
mod rawdb;
mod releases;
mod reports;
mod research;
mod rounds;
mod upload;
