//! The custodian's use cases: one module per thing its people do (upload, custody, rounds, research,
//! the operator's commands, the audit trail, access by token), each taking the parts it needs
//! (store, keys, index, metrics, the clock) as arguments or a small struct of its own. The HTTP
//! routes and the CLI's admin commands both call these. May use the core (`release`, `research`,
//! `extract`, `noise`, `audit`, `tables`) and the parts (`store`, `keys`, `index`, `clock`,
//! `metrics`); never `http`.

pub mod access;
pub mod audit_trail;
pub mod custody;
pub mod error;
pub mod operator;
pub mod research;
pub mod rounds;
pub mod upload;
