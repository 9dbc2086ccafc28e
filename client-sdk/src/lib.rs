//! Provider SDK of the Kwaliteitsmonitor: reads a provider's CSV export, validates every row, pseudonymises
//! the BSN and the trajectory number, coarsens dates, seals the records with HPKE to the custodian's key,
//! signs them with the provider's Ed25519 key and uploads them. Also the synthetic export generator.
//!
//! The API for other crates (end-to-end tests, benchmarks, the service's demo):
//!
//! - [`keys::ProviderKeys`] and [`keys::RegionalKey`]: `generate()`, `write_to(path, force)`, `load(path)`.
//! - [`prepare::PrepareContext`] with [`pseudonym::Pseudonymiser`]; [`prepare::prepare_file`] prepares a
//!   small file in memory, [`prepare::validate_file`] (pass 1) and [`prepare::Records`] (pass 2) stream.
//! - [`client::Client`]: `new(base_url, token)`, `keys()`, `active_key()`, `me()`, `post_batch(&SealedBatch)`,
//!   `list_batches()`, `get_batch(id)`, `withdraw_batch(id)`, `withdraw_trajectory(&pseudonym)`, `export()`,
//!   `audit(after, limit)`; failures are [`client::ClientError`] with the problem type.
//! - [`custody::withdraw`] and [`custody::export_csv`] (`kwm withdraw`, `kwm export`);
//!   [`custody::trajectory_pseudonym`] names a trajectory by its number as an upload does.
//! - [`upload::upload_file`] with [`upload::UploadOptions`] gives an [`upload::UploadReport`].
//! - [`batch::seal_records`] seals any records as one batch with a chosen id (replays, conflicts,
//!   tampering); [`batch::new_batch_id`] draws the id of one upload attempt; [`batch::BatchBuilder`]
//!   splits.
//! - [`withdrawn::WithdrawnList`]: the provider's own list of withdrawn trajectories in its keys
//!   directory, which `kwm upload` leaves out.
//! - [`synth::generate`] writes synthetic exports; [`synth::write_single_export`] streams a large one;
//!   [`synth::Generator`] yields trajectories in memory.

pub mod batch;
pub mod cli;
pub mod client;
pub mod coarsen;
pub mod config;
pub mod custody;
pub mod export;
pub mod fields;
pub mod keys;
pub mod prepare;
pub mod pseudonym;
pub mod secret;
pub mod synth;
pub mod upload;
pub mod withdrawn;

pub use client::{Client, ClientError, PostOutcome, RetryPolicy};
pub use keys::{ProviderKeys, RegionalKey};
pub use prepare::{BadRow, FieldError, PrepareContext};
pub use pseudonym::Pseudonymiser;
pub use secret::{SecretKey32, Token};
pub use upload::{upload_file, UploadError, UploadOptions, UploadReport};
