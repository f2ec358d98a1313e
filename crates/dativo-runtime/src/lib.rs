//! dativo-runtime: runs jobs. The [`runner`] owns everything but the data itself — loading the
//! reader and writer, back-pressure, checkpoints, the commit protocol, retries, cancellation —
//! and the [`state_store`] keeps committed state, run history and per-job locks.

pub mod implementations;
pub mod maintain;
mod pg_store;
pub mod runner;
pub mod state_store;
pub mod streams;

pub use runner::{run, CancelToken, NoObserver, Observer, RunEvent, RunOptions, RunSummary};
pub use state_store::{RunRecord, RunStatus, StateStore, StoredState};
