//! `reader: http` — records from JSON REST APIs, without code.
//!
//! * GET or POST, headers, query parameters, a JSON body; auth by bearer token, basic, an API
//!   key (header or query) or OAuth2 client credentials — secrets from `${env:}`/`${file:}`,
//!   never printed.
//! * Records found by a JSONPath (`$.data.items`); columns declared (`schema`) or inferred
//!   from the first page: integers, floats, booleans, strings; nested objects and arrays are
//!   kept as JSON text (a `json` column).
//! * Pagination: page number, offset/limit, a cursor token in the body, a next URL in the
//!   body, or `Link: rel="next"` headers.
//! * Incremental: the highest value of a cursor field is the state, sent back as a parameter
//!   (`updated_since`); with `primary_key`, records at exactly that value that were already
//!   loaded are skipped (for APIs whose `since` is inclusive). An interrupted run resumes at
//!   the page after its last commit.
//! * Faults: 429 and 5xx, timeouts and dropped connections are retried with backoff, honouring
//!   `Retry-After`; `requests_per_second` caps the rate; other 4xx fail at once naming the URL
//!   (without secrets).

mod config;
pub mod jsonpath;
mod reader;

pub use config::HttpReaderConfig;
pub use reader::HttpReader;

#[cfg(test)]
mod tests;
