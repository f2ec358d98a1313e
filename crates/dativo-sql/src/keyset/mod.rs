//! The SQL source core shared by the readers (`postgres`, `mysql`): discovery, the ordering
//! column, the key ranges (one per partition), `lookback`, the state that lets an interrupted
//! run resume exactly after its last committed batch, and the config checks — written once
//! over a small [`Dialect`] trait (quoting, catalog queries, type mapping, and how a plan's
//! SQL is executed into Arrow batches).
//!
//! Batches end only between distinct values of the ordering column, so "every row with a key
//! up to K" is a precise description of what was delivered, and a range resumes with `key > K`.
//! A batch ends at the first key change after `batch_size` rows or `batch_bytes` bytes
//! ([`BatchBound`]); rows sharing one key value always stay together, so a batch can pass
//! either bound only by the rows of its last key.
//!
//! ## Incremental reads and NULL cursors
//!
//! An incremental range selects `cursor > K`, which no NULL cursor matches: rows with a NULL
//! cursor could never be delivered. A run refuses to plan while the source has any (a data
//! error naming the source, the column and the count) instead of skipping them silently; the
//! check is skipped when the catalog says the column is NOT NULL.
//!
//! ## `lookback`
//!
//! A run reads up to `upper`, the highest cursor in its snapshot; the next run starts
//! `lookback` below it, to catch rows that committed late with a cursor the previous run had
//! already passed. Rows it had delivered are skipped by `seen`: md5 of (primary key, cursor) of
//! every row delivered with a cursor in the window (`upper - lookback`, `upper`].
//!
//! `seen` must name exactly the rows that were *delivered*, never rows merely visible when it
//! is computed. An interrupted run resumes its plan in a new snapshot, and a row that committed
//! in between into a part the first attempt had already delivered is visible there but was
//! never delivered; computing `seen` by querying the window at the end of the resumed run would
//! list it, and the next run would skip it for good. So `seen` is collected from the rows
//! themselves: every read selects, beside the columns, the row's hash when its cursor is in the
//! window ([`Plan::seen_above`]); each batch carries those hashes ([`PartMsg::Batch`]) into
//! [`Plan::seen`], which travels with the plan in every mid-run checkpoint, so a resumed run
//! continues from exactly what was committed. Rows of the window an earlier run delivered (and
//! this run skips) are added when the plan is made. The late row above is then not in `seen`,
//! and the next run's lookback loads it, once.
//!
//! ## Key arithmetic
//!
//! Split points and the bottom of a `lookback` window are computed exactly, in `i128`, on
//! integer, decimal, date and timestamp keys ([`KeyType`]).

mod batch;
mod config;
mod dialect;
mod keys;
mod source;
mod state;

pub use batch::{
    check_array_room, check_batch_bytes, key_literal, ArrayDecoder, BatchBound, Emitter, PartMsg,
    ReadSpec, DEFAULT_BATCH_BYTES, MAX_ARRAY_BYTES, MAX_BATCH_BYTES,
};
pub use batch::{take_bytes, take_primitive};
pub use config::{
    load, ConnectionOptions, KeyValue, Lookback, ReadMode, SqlConfig, SqlOptions, SslMode,
};
pub use dialect::{Column, Described, Dialect, Syntax, Unsupported};
pub use keys::{parse_decimal, KeyType};
pub use source::SqlSource;
pub use state::{split_ranges, KeyRange, KeysetState, Plan};
