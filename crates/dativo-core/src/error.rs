//! One error type for the whole engine: a [`ErrorKind`], a message, optional context and a
//! retryable flag. The runner's retry loop looks only at [`Error::is_retryable`]; the CLI maps
//! kinds to exit codes (see [`ErrorKind::exit_code`]).

use std::fmt;

/// What went wrong, coarsely: decides the exit code and the default retry behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The job file or a connector's configuration is invalid. Never retried.
    Config,
    /// A service could not be reached (refused, DNS, TLS, timeout). Retried.
    Connect,
    /// Credentials were rejected or a permission is missing. Never retried.
    Auth,
    /// A schema is missing, mismatched or unsupported. Never retried.
    Schema,
    /// A value could not be read, parsed or converted. Never retried.
    Data,
    /// A plugin failed, panicked or broke its contract. Not retried unless the plugin says so.
    Plugin,
    /// A temporary failure (dropped connection, throttling). Retried.
    Transient,
    /// Another run of the same job holds it (a state-store lock, a Parquet prefix lease, an
    /// Iceberg commit guard): "job `x` is already running". Not retried; exit code 7.
    Busy,
    /// A concurrent commit won a race (an Iceberg catalog swap, a taken manifest sequence).
    /// Retried; exit code 7 once retries are spent.
    Conflict,
    /// Local or remote storage failed (disk full, permission denied on a path). Not retried.
    Io,
    /// The run was cancelled (Ctrl-C, SIGTERM, an API call). Never retried.
    Cancelled,
    /// A bug in dativo. Never retried.
    Internal,
}

impl ErrorKind {
    /// The process exit code used by the CLI for an error of this kind.
    ///
    /// | code | meaning |
    /// |---|---|
    /// | 1 | internal error |
    /// | 2 | configuration error (job file, command line) |
    /// | 3 | connection or authentication error |
    /// | 4 | data or schema error |
    /// | 5 | plugin error |
    /// | 6 | storage (I/O) error |
    /// | 7 | transient error or commit conflict that outlived its retries; the job is busy (another run holds it) |
    /// | 130 | cancelled |
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Config => 2,
            ErrorKind::Connect | ErrorKind::Auth => 3,
            ErrorKind::Data | ErrorKind::Schema => 4,
            ErrorKind::Plugin => 5,
            ErrorKind::Io => 6,
            ErrorKind::Transient | ErrorKind::Busy | ErrorKind::Conflict => 7,
            ErrorKind::Cancelled => 130,
        }
    }

    /// Whether errors of this kind are retried unless they say otherwise.
    pub fn retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect | ErrorKind::Transient | ErrorKind::Conflict
        )
    }

    /// A short lowercase name, used in logs, run history and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Schema => "schema",
            ErrorKind::Data => "data",
            ErrorKind::Plugin => "plugin",
            ErrorKind::Transient => "transient",
            ErrorKind::Busy => "busy",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Io => "io",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every dativo interface.
///
/// Build one with the kind constructors ([`Error::config`], [`Error::data`], …), then add
/// where it happened with [`Error::context`]. Display prints `context: … : message: source`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<String>,
    retryable: bool,
    key_path: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with dativo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`; retryable as the kind's default.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            retryable: kind.retryable_by_default(),
            key_path: None,
            source: None,
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// A connection error (retryable).
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connect, message)
    }
    /// An authentication or permission error.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Auth, message)
    }
    /// A schema error.
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Schema, message)
    }
    /// A data error.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }
    /// A plugin error.
    pub fn plugin(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Plugin, message)
    }
    /// A transient error (retryable).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// Another run of the same job holds it (not retried).
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }
    /// A concurrent commit won a race (retryable).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    /// A storage error.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    /// The run was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }
    /// An internal error (a bug).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Override whether the runner retries this error.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Add where the error happened (outermost last), e.g. `reader 'file'` or `file data/a.csv`.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context.push(context.into());
        self
    }

    /// The configuration key this error is about, relative to the config mapping that was
    /// parsed (`table`, `columns[2].name`); the job loader turns it into file, key path and line.
    pub fn with_key_path(mut self, path: impl Into<String>) -> Self {
        self.key_path = Some(path.into());
        self
    }

    /// The configuration key this error is about, if any.
    pub fn key_path(&self) -> Option<&str> {
        self.key_path.as_deref()
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the runner should retry the run.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether another run of the same job holds what this run needed ([`ErrorKind::Busy`]).
    pub fn is_busy(&self) -> bool {
        self.kind == ErrorKind::Busy
    }

    /// This error and its causes, outermost first, one per line: what `-v` prints. Each line
    /// is one error's own text (a dativo error's context and message; another error's display),
    /// so a cause that [`Display`](fmt::Display) folds into the first line is not repeated.
    pub fn chain(&self) -> String {
        let mut out = self.head();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            out.push_str("\n  caused by: ");
            match cause.downcast_ref::<Error>() {
                Some(e) => out.push_str(&e.head()),
                None => out.push_str(&cause.to_string()),
            }
            next = cause.source();
        }
        out
    }

    /// Context, key path and message, without the source.
    fn head(&self) -> String {
        let mut out = String::new();
        for c in self.context.iter().rev() {
            out.push_str(c);
            out.push_str(": ");
        }
        if let Some(path) = &self.key_path {
            out.push_str(path);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.head())?;
        if let Some(source) = &self.source {
            let s = source.to_string();
            if !s.is_empty() && !self.message.contains(&s) {
                write!(f, ": {s}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        let kind = match &e {
            A::IoError(..) => ErrorKind::Io,
            A::SchemaError(_) => ErrorKind::Schema,
            A::ExternalError(_) => ErrorKind::Internal,
            _ => ErrorKind::Data,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let message = e.to_string();
        Error::io(message).with_source(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::data(format!("invalid JSON: {e}"))
    }
}

/// Add context to any `Result<_, Error>` without a closure at every call site.
pub trait ResultExt<T> {
    /// Add context computed lazily.
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_outer_context_first() {
        let e = Error::data("bad value")
            .context("row 3")
            .context("file a.csv");
        assert_eq!(e.to_string(), "file a.csv: row 3: bad value");
        assert!(!e.is_retryable());
        assert!(Error::connect("x").is_retryable());
        assert_eq!(Error::config("x").kind().exit_code(), 2);
    }

    #[test]
    fn kinds_of_concurrent_runs() {
        let busy = Error::busy("job `j` is already running");
        assert!(busy.is_busy() && !busy.is_retryable());
        assert_eq!(busy.kind().exit_code(), 7);
        let conflict = Error::conflict("another commit won");
        assert!(!conflict.is_busy() && conflict.is_retryable());
        assert_eq!(conflict.kind().exit_code(), 7);
    }

    #[test]
    fn the_chain_lists_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let inner = Error::io("cannot write").with_source(io).context("file a");
        let outer = Error::internal("run failed").with_source(inner);
        assert_eq!(
            outer.chain(),
            "run failed\n  caused by: file a: cannot write\n  caused by: denied"
        );
        // Display folds the direct cause in once.
        assert_eq!(
            outer.to_string(),
            "run failed: file a: cannot write: denied"
        );
    }
}
