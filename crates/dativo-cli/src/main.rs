//! The `dativo` command-line tool.

mod crypto;
mod deploy;
mod init;
mod output;
mod plugin_cmd;
mod registry;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use dativo_core::job::Job;
use dativo_core::{secrets, Error, ErrorKind};
use dativo_runtime::{CancelToken, RunOptions, RunStatus, StateStore};

const AFTER_HELP: &str = "\
Examples:
  dativo init                                   write a starter job file (asks, or use flags)
  dativo run examples/jobs/quickstart.yaml      run a job once (with its retries)
  dativo run jobs/orders.yaml --dry-run         connect, plan, show the schema; write nothing
  dativo validate jobs/*.yaml                   check job files without connecting
  dativo check jobs/orders.yaml                 connect to the source and print its schema
  dativo state show jobs/orders.yaml            the committed incremental state
  dativo runs jobs/orders.yaml                  run history
  dativo serve --jobs jobs/                     run every job on its schedule; API, metrics, page
  dativo verify jobs/phi.yaml                   check encrypted files against the audit trail
  dativo decrypt jobs/phi.yaml -o phi.parquet   decrypt what an encrypted job committed
  dativo completions bash > ~/.local/share/bash-completion/completions/dativo

Relative paths in a job file (a file reader's `path`, a Parquet `path`, `state.dir`, a local
warehouse) are relative to the working directory dativo runs in, not to the job file.

Exit codes:
  0 success   2 configuration   3 connection/auth   4 data/schema
  5 plugin    6 storage (I/O)   7 transient (retries exhausted), or the job is already running
  1 internal  130 cancelled

With -v an error is shown with its causes, one per line.";

/// dativo moves data from databases, files and APIs into a data lake (Parquet, Iceberg),
/// exactly once, with readers and writers you can plug in.
#[derive(Parser)]
#[command(name = "dativo", version, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// Directory of the state store (state.db, locks). Default: the job's `state.dir`, else
    /// `.dativo` in the working directory.
    #[arg(long, global = true, env = "DATIVO_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// A PostgreSQL state store instead of SQLite (`postgres://user:pw@host/db`), shared by
    /// every dativo process and `serve` instance that points at it.
    #[arg(
        long,
        global = true,
        env = "DATIVO_STATE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    state_url: Option<String>,

    /// Log format on stderr: `text` (default) or `json` (one object per line; the run summary
    /// on stdout is JSON too).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// More log output (-v: debug, -vv: trace) and errors with their causes. `RUST_LOG` works
    /// too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Let job files load native plugin libraries from DIR too (repeatable). Without it a job
    /// file may name libraries only in its own directory and the plugin path (DATIVO_PLUGIN_PATH,
    /// ~/.dativo/plugins). DATIVO_ALLOW_PLUGIN_PATH (`:`-separated) does the same.
    #[arg(long, global = true, value_name = "DIR")]
    allow_plugin_path: Vec<PathBuf>,

    /// Read `NAME=value` lines from FILE for `${env:NAME}` in job files (repeatable; the
    /// process environment wins; `#` comments, blank lines, `export ` and quotes allowed).
    #[arg(long, global = true, value_name = "FILE")]
    env_file: Vec<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DeployCommand {
    /// A build context for a plugins image holding exactly the plugins dativo.lock pins (for
    /// `deploy kubernetes --plugins-image` and the Helm chart).
    #[command(after_help = "Example:
  dativo plugin install --locked && dativo deploy plugins --lock dativo.lock --out build/plugins
  docker build -t registry.example.com/our-plugins:1 build/plugins
  dativo deploy kubernetes jobs/ --serve --image registry/dativo:0.1 --plugins-image registry.example.com/our-plugins:1 …

The installed files are checked against the lock (artifact hash) and their install records (file
hashes) before they are copied. The pods find them as $DATIVO_HOME/plugins (DATIVO_HOME and
DATIVO_LOCK are set by --plugins-image), so `registry:NAME@REQ` resolves offline, to the locked
version. Python plugins are refused here: install their wheels into the dativo image instead.")]
    Plugins {
        /// The lock file.
        #[arg(long, default_value = "dativo.lock")]
        lock: PathBuf,
        /// The build context directory to write (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The base image (needs `cp` for the init container).
        #[arg(long, default_value = "busybox:1.36")]
        base: String,
    },
    /// Kubernetes manifests: the job as an Indexed Job of N shards (a CronJob of one when the
    /// job has a schedule), its file in a ConfigMap, `${env:…}` values from a Secret, memory
    /// requests from the job's bounds; with --serve, `dativo serve` as a Deployment.
    #[command(after_help = "Examples:
  dativo deploy kubernetes jobs/orders.yaml --shards 8 --image registry/dativo:0.1 --secret orders-env | kubectl apply -f -
  dativo deploy kubernetes jobs/orders.yaml --shards 1 --image registry/dativo:0.1 --serve \\
      --secret orders-env --state-url-secret dativo-state/url
  dativo deploy kubernetes jobs/ --serve --image registry/dativo:0.1 --secret env \\
      --state-url-secret dativo-state/url --service-account dativo \\
      --service-account-annotation eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/dativo \\
      --plugins-image registry/our-plugins:1.2

A Helm chart with the same choices is in charts/dativo (docs/scaling.md#helm).

The pods run `dativo run /etc/dativo/job.yaml --shards N`; each takes its shard index from
JOB_COMPLETION_INDEX. A failed index is retried on its own (backoffLimitPerIndex) and resumes
from its last commit. See docs/scaling.md.")]
    Kubernetes {
        /// The job file, or a directory of job files (with --serve: one Deployment runs them
        /// all; without: each job's manifests in turn).
        job: PathBuf,
        /// Shards: parallel pods, each reading its slice of the source.
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// The container image (see the Dockerfile).
        #[arg(long)]
        image: String,
        /// Namespace of every object.
        #[arg(long)]
        namespace: Option<String>,
        /// The Secret with the job's `${env:…}` values (one key per variable).
        #[arg(long)]
        secret: Option<String>,
        /// SECRET/KEY with a PostgreSQL state-store URL (shared state and run history).
        #[arg(long, value_name = "SECRET/KEY")]
        state_url_secret: Option<String>,
        /// Also `dativo serve` as a Deployment (needs --state-url-secret).
        #[arg(long)]
        serve: bool,
        /// Replicas of the serve Deployment (at least 2).
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// Run the pods as this ServiceAccount: how they get cloud credentials without keys
        /// (IRSA on EKS, workload identity on GKE and AKS).
        #[arg(long, value_name = "NAME")]
        service_account: Option<String>,
        /// Create the --service-account with this annotation (repeatable), e.g.
        /// eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/dativo; without one the
        /// ServiceAccount must exist.
        #[arg(long, value_name = "KEY=VALUE")]
        service_account_annotation: Vec<String>,
        /// An image with plugin libraries under /plugins (and a `cp`, e.g. FROM busybox): an
        /// init container copies them into the pods, DATIVO_PLUGIN_PATH points at them. Or build
        /// them into the dativo image (docs/scaling.md).
        #[arg(long, value_name = "IMAGE")]
        plugins_image: Option<String>,
    },
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum DecryptFormat {
    Parquet,
    Csv,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job once: read, write, commit at every checkpoint, retry retryable failures.
    #[command(after_help = "Examples:
  dativo run examples/jobs/quickstart.yaml
  PG_URL=postgres://… dativo run jobs/orders.yaml --no-progress
  dativo run jobs/orders.yaml --shard 2/8        one of 8 shards (or DATIVO_SHARD=2/8)
  JOB_COMPLETION_INDEX=2 dativo run jobs/orders.yaml --shards 8
  dativo run jobs/orders.yaml --log-format json > summary.json

A progress bar is shown on a terminal; plain log lines otherwise. Ctrl-C or SIGTERM stops the
run cleanly: nothing uncommitted becomes visible, and the exit code is 130.")]
    Run {
        /// The job file.
        job: PathBuf,
        /// Do not show a progress bar even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Run one slice of the job: `I/N` (0 ≤ I < N). Each shard reads its part of the
        /// source, keeps its own state and commits on its own into the same target.
        #[arg(
            long,
            env = "DATIVO_SHARD",
            value_name = "I/N",
            conflicts_with = "shards"
        )]
        shard: Option<String>,
        /// The shard count, with the index from JOB_COMPLETION_INDEX (a Kubernetes Indexed
        /// Job) or DATIVO_SHARD_INDEX.
        #[arg(long, env = "DATIVO_SHARDS", value_name = "N")]
        shards: Option<u32>,
        /// Change data capture (`mode: cdc`): read what the log holds now, commit it and
        /// exit, instead of following it until stopped (SIGINT/SIGTERM commit and exit 0).
        #[arg(long)]
        once: bool,
        /// Validate, connect to the source and plan the read from the committed state; print
        /// the schema, the estimated rows and what the writer would do. Opens no writer and
        /// writes, commits and locks nothing (a change data capture source is not opened: that
        /// would create its replication slot).
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a starter job file for a reader and a writer: asks on a terminal, or takes flags.
    #[command(after_help = "Examples:
  dativo init                                              asks: reader, writer, name
  dativo init --reader postgres --writer iceberg --name orders
  dativo init --reader file --writer parquet -o jobs/landing.yaml
  dativo init --reader mysql --writer parquet -o -         print it instead

The file is commented: each value to change says what it means. `dativo validate FILE` checks it
without connecting; `dativo run FILE --dry-run` connects and shows what it would read.")]
    Init {
        /// The source: file, postgres, mysql or http.
        #[arg(long, value_enum)]
        reader: Option<init::InitReader>,
        /// The target: parquet or iceberg.
        #[arg(long, value_enum)]
        writer: Option<init::InitWriter>,
        /// The job's name (default from the reader).
        #[arg(long)]
        name: Option<String>,
        /// The file to write (default NAME.yaml), `-` for stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script: subcommands, flags and their values.
    #[command(after_help = "Install:
  bash  dativo completions bash > ~/.local/share/bash-completion/completions/dativo
  zsh   dativo completions zsh > \"${fpath[1]}/_dativo\"   (a directory on $fpath; then compinit)
  fish  dativo completions fish > ~/.config/fish/completions/dativo.fish

Or for the current shell only:  source <(dativo completions bash)")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Check job files without connecting to anything: syntax, keys, types, references, and
    /// each built-in connector's own configuration. Native plugin libraries are not loaded
    /// (only checked: they exist and lie where a job may load from) unless --load is given.
    #[command(after_help = "Examples:
  dativo validate examples/jobs/quickstart.yaml
  dativo validate jobs/*.yaml
  dativo validate --load jobs/custom.yaml        also load its plugin libraries (runs their code)

Errors name the file, the key path and the line:
  jobs/orders.yaml:7: source.config.tabel: unknown field `tabel`, expected one of …
The exit code is that of the first failing file's error (2 for configuration, 5 for a library
that is not a usable dativo plugin — as `dativo run` would exit).")]
    Validate {
        /// Job files.
        #[arg(required = true)]
        jobs: Vec<PathBuf>,
        /// Also load native plugin libraries and check what they provide, as `run` does. This
        /// runs the libraries' code: use it only on job files you trust.
        #[arg(long)]
        load: bool,
    },
    /// Validate, then connect to the source and print the schema it would read.
    #[command(after_help = "Example:\n  dativo check examples/jobs/quickstart.yaml")]
    Check {
        /// The job file.
        job: PathBuf,
    },
    /// The streams a job with `tables:` would load: each selected table with the catalog's
    /// estimated rows and bytes, its key, cursor and mode, and its rendered target.
    #[command(after_help = "Examples:
  dativo discover examples/jobs/postgres_schema_to_iceberg.yaml
  dativo discover jobs/db.yaml --json

Per table: the cursor is the stream's `cursor`, else the first of the source's `cursor:` list the
table has, else a NOT NULL time or integer column named updated_at, modified_at, last_modified,
last_updated, updated or modified; without one the table is read in full every run (into
Iceberg: an overwrite). Keyed incremental streams into Iceberg are merged on their key.")]
    Discover {
        /// The job file (its source has `tables:`).
        job: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Keep a job's Iceberg table healthy: compact small files (applying deletes), rewrite
    /// manifests, expire old snapshots, remove orphan files. Safe while the job runs.
    #[command(after_help = "Examples:
  dativo maintain jobs/orders.yaml                    what the job's `maintenance:` block says
                                                      (without one: compact, expire, orphans)
  dativo maintain jobs/orders.yaml --compact          only compaction
  dativo maintain jobs/orders.yaml --expire-snapshots --remove-orphans --dry-run

Defaults (override in the job file's `maintenance:` block, see docs/iceberg.md):
  compact            partitions with >= 5 small files (< 75% of the target size) or deletes,
                     rewritten into files of the table's target size, deletes applied
  expire-snapshots   snapshots older than 7 days, keeping the newest 10 whatever their age
  remove-orphans     unreferenced files older than 3 days (never less than 1 hour)

Ingestion never waits: maintenance and runs of the job commit to the table concurrently, and
a compaction that loses a race to a merge re-validates instead of resurrecting rows. The job's
incremental state survives every operation. Each maintenance run is recorded: `dativo runs`.")]
    Maintain {
        /// The job file (its target must be `writer: iceberg`).
        job: PathBuf,
        /// Bin-pack small data files per partition, applying position deletes.
        #[arg(long)]
        compact: bool,
        /// Rewrite the current snapshot's manifests into few.
        #[arg(long)]
        rewrite_manifests: bool,
        /// Remove old snapshots, then the files only they referenced.
        #[arg(long)]
        expire_snapshots: bool,
        /// Delete files under the table location that no metadata references.
        #[arg(long)]
        remove_orphans: bool,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or reset a job's committed incremental state.
    #[command(subcommand)]
    State(StateCommand),
    /// Drop what a job wrote (its Iceberg table, or its Parquet files and commit log) and
    /// reset its state, so the next run creates the target anew from the source's schema.
    #[command(subcommand)]
    Target(TargetCommand),
    /// A job's run history: start, end, status, rows, bytes, error.
    #[command(
        after_help = "Examples:\n  dativo runs examples/jobs/quickstart.yaml\n  dativo runs quickstart --limit 5 --json"
    )]
    Runs {
        /// A job file, or a job name (then the state store is `--state-dir` or `.dativo`).
        job: String,
        /// How many runs, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decrypt what an encrypted `parquet` or `iceberg` writer committed, with the job's key
    /// provider (so only those who hold the key can): to a Parquet or CSV file, or stdout.
    #[command(after_help = "Examples:
  dativo decrypt jobs/phi.yaml -o phi.parquet             every committed file, into one Parquet file
  dativo decrypt jobs/phi.yaml -o phi.csv                 the same as CSV (format from the extension)
  dativo decrypt jobs/phi.yaml part-0192….parquet.enc     one file, CSV on stdout
  dativo decrypt jobs/phi.yaml --format parquet -o - > x.parquet

Every byte is authenticated while it is decrypted: a modified, truncated or swapped file stops
the command with an error (exit 4), a wrong key names the key (exit 3). The output is
plaintext: it is created with mode 0600 — keep it where the data may be.")]
    Decrypt {
        /// The job file (its target's `encryption:` block says how to get the keys).
        job: PathBuf,
        /// Files to decrypt, as `dativo verify` lists them (relative to the dataset, or a bare
        /// file name); default: every committed file, oldest first.
        files: Vec<String>,
        /// Output file, or `-` for stdout (the default).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// `parquet` or `csv`; default: from the output's extension, CSV on stdout.
        #[arg(long, value_enum)]
        format: Option<DecryptFormat>,
    },
    /// Check every file an encrypted writer committed against the audit trail: present,
    /// unchanged (SHA-256), every byte authentic, the committed row count; the audit log's hash
    /// chain; no file the commits do not name. Exit 0 only when everything checks out.
    #[command(after_help = "Example:
  dativo verify jobs/phi.yaml")]
    Verify {
        /// The job file.
        job: PathBuf,
    },
    /// Run every job in a directory on its `schedule`, with an HTTP API (docs/openapi.yaml),
    /// Prometheus metrics at /metrics, /healthz, /readyz and a console at / (a page per job
    /// at /jobs/NAME: run history, a chart, logs, state, Run now and Cancel).
    #[command(after_help = "Examples:
  dativo serve --jobs jobs/
  DATIVO_API_TOKEN=… dativo serve --jobs jobs/ --listen 0.0.0.0:8080 --max-concurrent 8
  dativo serve --jobs jobs/ --state-url postgres://dativo@db/dativo     several instances, one state

  curl localhost:8080/api/jobs
  curl -X POST -H \"Authorization: Bearer $DATIVO_API_TOKEN\" localhost:8080/api/jobs/orders/runs
  curl -X POST -H \"Authorization: Bearer $DATIVO_API_TOKEN\" localhost:8080/api/runs/RUN_ID/cancel

A job never runs twice at once (across instances too, with a PostgreSQL state store); job files
are re-read when they change, and an invalid one is reported while the others keep running.
SIGTERM or Ctrl-C: nothing new starts, running jobs get --grace to finish, then are cancelled
(nothing half-committed).")]
    Serve {
        /// The directory of job files (*.yaml).
        #[arg(long, value_name = "DIR")]
        jobs: PathBuf,
        /// Address of the HTTP server.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Runs at the same time, over all jobs.
        #[arg(long, default_value_t = 4)]
        max_concurrent: usize,
        /// On shutdown, how long running jobs may take before they are cancelled.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Bearer token required to trigger and cancel runs. Leave it unset to refuse those; an
        /// empty token is an error.
        #[arg(long, env = "DATIVO_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Open HTTP connections at most; at the limit the one idle the longest is closed to make
        /// room. Lowered under a low open-file limit, to keep 64 file descriptors per
        /// --max-concurrent run (at least 256) for the jobs.
        #[arg(long, default_value_t = 512, value_name = "N")]
        max_connections: usize,
        /// Time a client has to send a whole request header after connecting or after the
        /// previous response (so also how long an idle keep-alive connection stays open).
        #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
        http_header_timeout: std::time::Duration,
    },
    /// Print deployment manifests for a job.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// List the readers and writers this binary can use: built-ins and plugin libraries.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Test a plugin against the conformance suite, or create a new plugin project.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run the conformance suite against a reader or writer: schema honoured, every batch
    /// checked, state resumes exactly (mid-stream and at the end), errors surface with the
    /// plugin's message, close always succeeds; writers get every supported Arrow type with
    /// nulls, commit, committed_state, abort and an empty commit.
    #[command(after_help = "Examples:
  dativo plugin test ./libmy_plugin.so                  every reader and writer in the library
  dativo plugin test ./libmy_plugin.so#orders --config '{\"rows\": 1000}'
  dativo plugin test ./libdativo_cpp_csv.so#csv --config '{\"path\": \"/tmp/out\"}'
  dativo plugin test my_plugin --config @orders.json    bare names use DATIVO_PLUGIN_PATH, ~/.dativo/plugins
  dativo plugin test file --config '{\"path\": \"examples/data/orders/*.csv\"}'   a built-in
  dativo plugin test my_package.MyReader                 a Python class (from $VIRTUAL_ENV)

Exit code 0 when every check passes, 5 otherwise.")]
    Test {
        /// A plugin library (`./libx.so`, `./libx.so#name`, `x#name`), a Python class path
        /// (`package.module.Class`) or a built-in name.
        implementation: String,
        /// The config passed to initialize, as JSON, or @FILE with JSON in it.
        #[arg(long)]
        config: Option<String>,
        /// Test only the library's readers, or only its writers.
        #[arg(long, value_enum)]
        side: Option<SideArg>,
    },
    /// Find plugins in a registry index by name, description, publisher or reader/writer name.
    #[command(after_help = "Examples:
  dativo plugin search postgres --index https://plugins.example.com
  DATIVO_INDEX=s3://acme-plugins/index dativo plugin search ''     every plugin")]
    Search {
        /// What to look for (empty: everything).
        term: Option<String>,
        /// The index: a directory, an http(s) URL or s3://bucket/prefix (default DATIVO_INDEX).
        #[arg(long)]
        index: Option<String>,
    },
    /// Show a plugin's versions, platforms, readers, writers and signing keys.
    Info {
        /// The plugin's name.
        name: String,
        /// The index (default DATIVO_INDEX).
        #[arg(long)]
        index: Option<String>,
    },
    /// Install plugins from an index and pin them in dativo.lock.
    #[command(after_help = "Examples:
  dativo plugin install acme-orders                 newest version; pinned in ./dativo.lock
  dativo plugin install acme-orders@^1.2 pg-cdc@=0.3.1
  dativo plugin install --locked                    exactly what dativo.lock pins (CI, images)

Before anything is unpacked: the version is not yanked, its ABI and platform fit, it is signed by
a key you trust for its publisher (`dativo plugin trust`), and the downloaded bytes have the signed
size and SHA-256. A version whose bytes differ from the lock file or an earlier install is
refused. Native libraries go to $DATIVO_HOME/plugins/NAME/VERSION (default ~/.dativo); Python
wheels are installed with pip into the bridge's virtualenv (DATIVO_PYTHON_VENV, VIRTUAL_ENV or
--python). Jobs then say `implementation: \"registry:acme-orders@^1\"`.

Exit codes: 2 not found, yanked, wrong ABI or platform; 3 untrusted, bad signature, bytes that do
not match; 6 disk.")]
    Install {
        /// NAME, NAME@VERSION or NAME@REQUIREMENT (^1, ~1.2, >=1,<2).
        specs: Vec<String>,
        /// Install exactly what the lock file pins (hashes must match).
        #[arg(long)]
        locked: bool,
        /// The index (default DATIVO_INDEX; with --locked, each entry's own).
        #[arg(long)]
        index: Option<String>,
        /// The lock file (default ./dativo.lock, or DATIVO_LOCK).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// The Python whose environment gets Python plugins.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Move locked plugins to the newest version matching their requirement.
    Update {
        /// Only these plugins (default: every locked one).
        names: Vec<String>,
        /// The index (default each entry's own).
        #[arg(long)]
        index: Option<String>,
        /// The lock file (default ./dativo.lock).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// The Python whose environment gets Python plugins.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Remove an installed plugin (all versions, or NAME@VERSION) and its lock entry.
    Uninstall {
        /// NAME or NAME@VERSION.
        spec: String,
        /// The lock file (default ./dativo.lock).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// The Python whose environment has Python plugins.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Trust a publisher's public key (installs signed with it are accepted), list or remove.
    #[command(after_help = "Examples:
  dativo plugin trust acme.pub                      the file `dativo plugin keygen` wrote
  dativo plugin trust 'dativo-ed25519 acme MCowBQ…'
  dativo plugin trust --list
  dativo plugin trust --remove 3f2a9c01d4e5b6a7

Keys live in $DATIVO_HOME/trusted-keys; DATIVO_TRUSTED_KEYS names one more file (CI, images).
Get a publisher's key from the publisher, not from the index you install from.")]
    Trust {
        /// A PUBLISHER.pub file or its line.
        key: Option<String>,
        /// List trusted keys (also what no argument does).
        #[arg(long)]
        list: bool,
        /// Stop trusting the key with this id.
        #[arg(long, value_name = "KEY_ID")]
        remove: Option<String>,
    },
    /// Make a publisher key pair: PUBLISHER.key (secret) and PUBLISHER.pub.
    Keygen {
        /// The publisher's name (lowercase letters, digits, - and _).
        #[arg(long)]
        publisher: String,
        /// Where to write the two files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Build a plugin project and write a distributable artifact (NAME-VERSION-PLATFORM.tar.gz).
    #[command(after_help = "Examples:
  dativo plugin package ./my_reader                Rust (cargo), C/C++/Go (make) or Python (pip wheel)
  dativo plugin package ./flight_server            a dativo-plugin.json of kind flight names the command

Then: dativo plugin sign ARTIFACT --key PUBLISHER.key && dativo plugin publish ARTIFACT --index DIR")]
    Package {
        /// The project directory (made by `dativo plugin new`, or any with the same layout).
        dir: PathBuf,
        /// Where to write the artifact (default DIR/dist).
        #[arg(long)]
        out: Option<PathBuf>,
        /// One line for the index.
        #[arg(long)]
        description: Option<String>,
        /// SPDX license expression.
        #[arg(long)]
        license: Option<String>,
        /// Homepage URL.
        #[arg(long)]
        homepage: Option<String>,
        /// The Python that builds wheels.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Sign an artifact with a publisher key (writes ARTIFACT.sig).
    Sign {
        /// The artifact.
        artifact: PathBuf,
        /// PUBLISHER.key from `dativo plugin keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check an artifact: safe archive, sound manifest, signed by a key you trust.
    Verify {
        /// The artifact (ARTIFACT.sig beside it).
        artifact: PathBuf,
    },
    /// Add a signed artifact to an index directory (served as static files: copy it to any
    /// web server or S3 prefix).
    Publish {
        /// The artifact (ARTIFACT.sig beside it).
        artifact: PathBuf,
        /// The index directory (created if missing).
        #[arg(long)]
        index: PathBuf,
    },
    /// Mark a published version withdrawn (installs refuse it; --undo reverts).
    Yank {
        /// NAME@VERSION.
        spec: String,
        /// The index directory.
        #[arg(long)]
        index: PathBuf,
        /// Un-yank.
        #[arg(long)]
        undo: bool,
    },
    /// Create a plugin project that builds and passes `dativo plugin test` as it is.
    #[command(after_help = "Examples:
  dativo plugin new --lang rust my_reader && cd my_reader && cargo build --release
  dativo plugin new --lang c my_reader && make -C my_reader
  dativo plugin new --lang go mainframe --dir plugins/mainframe
  dativo plugin new --lang python my_reader && cd my_reader && PYTHONPATH=. dativo plugin test my_reader.Reader

C, C++ and Go projects get a copy of dativo_plugin.h. Rust projects depend on the
dativo-plugin-sdk crate: by path on the dativo source tree this binary was built from when it is
still there, else from crates.io at this dativo's minor version. --sdk-path DIR takes a local
copy (a checkout's crates/dativo-plugin-sdk or an unpacked .crate), --sdk-version REQ a
registry version.")]
    New {
        /// The language.
        #[arg(long, value_enum)]
        lang: plugin_cmd::Lang,
        /// The plugin's name (an identifier): also its reader's name and the library's name.
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The dativo-plugin-sdk crate directory (Rust only).
        #[arg(long, conflicts_with = "sdk_version")]
        sdk_path: Option<PathBuf>,
        /// Depend on dativo-plugin-sdk from crates.io with this version requirement (Rust only),
        /// e.g. 0.1.
        #[arg(long)]
        sdk_version: Option<String>,
    },
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum SideArg {
    Reader,
    Writer,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print the committed state as JSON.
    #[command(after_help = "Example:\n  dativo state show examples/jobs/quickstart.yaml")]
    Show {
        /// A job file, or a job name.
        job: String,
        /// One stream (`schema.table`) of a job with `tables:`; without it, every stream's.
        #[arg(long, value_name = "STREAM")]
        stream: Option<String>,
    },
    /// Forget the committed state: the next run reads from the beginning. Data already written
    /// is not touched (and a writer that stores state with its data, like `parquet`, keeps
    /// its own copy: remove the output too for a full reload).
    #[command(after_help = "Example:\n  dativo state reset examples/jobs/quickstart.yaml")]
    Reset {
        /// A job file, or a job name.
        job: String,
        /// Reset one stream (`schema.table`) of a job with `tables:`; without it, the job
        /// and every stream of it.
        #[arg(long, value_name = "STREAM")]
        stream: Option<String>,
    },
}

#[derive(Subcommand)]
enum TargetCommand {
    /// Drop the job's target and reset its state: an Iceberg table is dropped from its
    /// catalog and its files deleted; a Parquet directory loses every file its commits
    /// published and its `_dativo/` bookkeeping (files dativo did not write stay). The next
    /// run starts from the beginning and creates the target from the source's schema — the
    /// way out of a table created with the wrong schema. Refused while the job runs.
    #[command(after_help = "Examples:
  dativo target drop jobs/orders.yaml --dry-run      what would be deleted
  dativo target drop jobs/orders.yaml                asks for the job's name on a terminal
  dativo target drop jobs/orders.yaml --yes          in scripts
  dativo target drop jobs/db.yaml --stream public.orders --yes   one stream of a `tables:` job

This deletes data: the table's snapshots (time travel) go with it. Exit 7 while a run of the
job holds its lock.")]
    Drop {
        /// The job file.
        job: PathBuf,
        /// One stream (`schema.table`) of a job with `tables:`; without it, every stream's.
        #[arg(long, value_name = "STREAM")]
        stream: Option<String>,
        /// Do not ask: drop.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Built-in readers and writers, and the plugin libraries found in DATIVO_PLUGIN_PATH
    /// and ~/.dativo/plugins with their versions.
    #[command(
        after_help = "Examples:\n  DATIVO_PLUGIN_PATH=./plugins dativo plugins list\n  dativo plugins list --installed     plugins installed from a registry index"
    )]
    List {
        /// Only plugins installed from a registry index ($DATIVO_HOME/plugins/NAME/VERSION),
        /// with publisher, key and whether their files are intact.
        #[arg(long)]
        installed: bool,
    },
}

/// Die quietly on a closed pipe (`dativo plugin test … | head`) like other Unix tools, instead
/// of panicking in `println!`. Rust ignores SIGPIPE by default.
#[allow(unsafe_code)]
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    output::init_logging(cli.log_format == LogFormat::Json, cli.verbose);
    dativo_plugins::native::allow_plugin_dirs(cli.allow_plugin_path.iter().cloned());
    let mut env_values = Vec::new();
    for f in &cli.env_file {
        match read_env_file(f) {
            Ok(v) => env_values.extend(v),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.kind().exit_code() as u8);
            }
        }
    }
    let _ = ENV_FILE.set(env_values);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.log_format == LogFormat::Json {
                let mut v = serde_json::json!({
                    "status": "error",
                    "kind": e.kind().as_str(),
                    "error": secrets::scrub(&e.to_string()),
                });
                if cli.verbose > 0 {
                    v["chain"] = output::error_text(&e, true).into();
                }
                eprintln!("{v}");
            } else {
                eprintln!("error: {}", output::error_text(&e, cli.verbose > 0));
            }
            ExitCode::from(e.kind().exit_code() as u8)
        }
    }
}

fn load(job: &Path) -> Result<Job, Error> {
    let files = ENV_FILE.get().map(Vec::as_slice).unwrap_or_default();
    if files.is_empty() {
        return Job::load(job);
    }
    Job::load_with_env(job, &|k| {
        std::env::var(k)
            .ok()
            .or_else(|| files.iter().find_map(|(n, v)| (n == k).then(|| v.clone())))
    })
}

/// `--env-file` values, read once at start.
static ENV_FILE: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Parse an env file: `NAME=value` lines, `export ` prefixes, `#` comments, quoted values.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("--env-file {}: {e}", path.display())).with_source(e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::config(format!(
                "{}:{}: expected NAME=value",
                path.display(),
                i + 1
            )));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::config(format!(
                "{}:{}: `{name}` is not a variable name",
                path.display(),
                i + 1
            )));
        }
        let v = value.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((name.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The state directory for a job: `--state-dir`, else the job's `state.dir`, else `.dativo`.
fn state_dir(cli: &Cli, job: Option<&Job>) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| job.and_then(|j| j.config.state.dir.clone()))
        .unwrap_or_else(|| PathBuf::from(".dativo"))
}

/// A job given as a file or a name → (name, state directory).
fn job_ref(cli: &Cli, arg: &str) -> Result<(String, PathBuf), Error> {
    let p = Path::new(arg);
    if p.is_file() {
        let job = load(p)?;
        let dir = state_dir(cli, Some(&job));
        Ok((job.name().to_string(), dir))
    } else if arg.ends_with(".yaml") || arg.ends_with(".yml") {
        Err(Error::config(format!("job file {arg} does not exist")))
    } else {
        Ok((arg.to_string(), state_dir(cli, None)))
    }
}

/// `--shard I/N`, or `--shards N` with the index from the environment.
fn resolve_shard(shard: Option<&str>, shards: Option<u32>) -> Result<dativo_core::Shard, Error> {
    if let Some(s) = shard {
        return dativo_core::Shard::parse(s).map_err(|m| Error::config(format!("--shard {m}")));
    }
    let Some(n) = shards else {
        return Ok(dativo_core::Shard::default());
    };
    let index = std::env::var("JOB_COMPLETION_INDEX")
        .or_else(|_| std::env::var("DATIVO_SHARD_INDEX"))
        .map_err(|_| {
            Error::config(
                "--shards N needs the shard's index in JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job) or DATIVO_SHARD_INDEX; or use --shard I/N",
            )
        })?;
    dativo_core::Shard::parse(&format!("{}/{n}", index.trim()))
        .map_err(|m| Error::config(format!("shard from JOB_COMPLETION_INDEX: {m}")))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 2m)"))
}

fn open_store_existing(cli: &Cli, dir: &Path) -> Result<StateStore, Error> {
    if cli.state_url.is_some() {
        return StateStore::open_with(dir, cli.state_url.as_deref());
    }
    if !dir.join("state.db").exists() {
        return Err(Error::config(format!(
            "no state store in {} (no job has run with it yet; see --state-dir)",
            dir.display()
        )));
    }
    StateStore::open(dir)
}

/// Ask for the job's name before `target drop` deletes anything; without a terminal, `--yes`.
fn confirm_drop(job: &Job) -> Result<(), Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::config(format!(
            "`dativo target drop` deletes the target of job `{}`: pass --yes to confirm (or \
             --dry-run to see what would go)",
            job.name()
        )));
    }
    eprint!(
        "This deletes what job `{}` wrote and resets its state. Type the job's name to confirm: ",
        job.name()
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::config(format!("reading the answer: {e}")).with_source(e))?;
    if answer.trim() != job.name() {
        return Err(Error::config("not confirmed: nothing was dropped"));
    }
    Ok(())
}

/// `dativo run --dry-run`: what a run would read and write, with nothing written.
fn dry_run_job(cli: &Cli, job: &Job, shard: dativo_core::Shard) -> Result<ExitCode, Error> {
    let dir = state_dir(cli, Some(job));
    if dativo_core::streams::is_multi(job) {
        let plans = dativo_runtime::streams::discover(job)?;
        println!(
            "dry run of job `{}`: {} streams would be loaded; nothing written",
            job.name(),
            plans.len()
        );
        // Only an existing state store is read: a dry run creates nothing.
        let states = if cli.state_url.is_some() || dir.join("state.db").exists() {
            StateStore::open_with(&dir, cli.state_url.as_deref())
                .and_then(|s| s.stream_states(job.name()))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        output::print_streams(job, &plans, &states, false);
        return Ok(ExitCode::SUCCESS);
    }
    let cdc = job
        .config
        .source
        .config
        .get("mode")
        .and_then(|m| m.as_str())
        == Some("cdc");
    if cdc {
        dativo_runtime::implementations::validate(job)?;
        println!(
            "dry run of job `{}`: valid. A change data capture source is not opened by a dry run \
             (opening it creates the replication slot or starts reading the binlog); \
             `dativo check` connects and shows the schema.",
            job.name()
        );
        let writes = match job
            .config
            .target
            .config
            .get("mode")
            .and_then(|m| m.as_str())
        {
            Some(m) => format!("`mode: {m}`"),
            None => "the change events, as the writer's default for a change stream (docs/cdc.md)"
                .into(),
        };
        output::print_target(job, &writes);
        return Ok(ExitCode::SUCCESS);
    }
    // Only an existing state store is read: a dry run creates nothing.
    let store = if cli.state_url.is_some() || dir.join("state.db").exists() {
        Some(StateStore::open_with(&dir, cli.state_url.as_deref())?)
    } else {
        None
    };
    let plan = dativo_runtime::runner::dry_run(job, store.as_ref(), shard)?;
    output::print_dry_run(job, &plan);
    Ok(ExitCode::SUCCESS)
}

fn dispatch(cli: &Cli) -> Result<ExitCode, Error> {
    match &cli.command {
        Command::Validate {
            jobs,
            load: loading,
        } => {
            let mut first_failure: Option<ErrorKind> = None;
            for p in jobs {
                let checked = load(p).and_then(|j| {
                    if *loading {
                        dativo_runtime::implementations::validate(&j)?;
                    } else {
                        dativo_runtime::implementations::validate_without_loading(&j)?;
                    }
                    Ok(j)
                });
                match checked {
                    Ok(j) => println!("ok: {} (job `{}`)", p.display(), j.name()),
                    Err(e) => {
                        first_failure.get_or_insert(e.kind());
                        eprintln!("error: {}", output::error_text(&e, cli.verbose > 0));
                    }
                }
            }
            // The exit code `run` would give for the same error.
            Ok(match first_failure {
                None => ExitCode::SUCCESS,
                Some(kind) => ExitCode::from(kind.exit_code() as u8),
            })
        }
        Command::Discover { job, json } => {
            let job = load(job)?;
            if !dativo_core::streams::is_multi(&job) {
                return Err(job.error_at(
                    "source.config",
                    "this job reads one stream: `dativo discover` lists the streams of a job with `tables: [\"schema.*\"]` or `streams: {NAME: {…}}` (`dativo check` shows this job's schema)",
                ));
            }
            let plans = dativo_runtime::streams::discover(&job)?;
            let dir = state_dir(cli, Some(&job));
            let states = StateStore::open_with(&dir, cli.state_url.as_deref())
                .and_then(|s| s.stream_states(job.name()))
                .unwrap_or_default();
            output::print_streams(&job, &plans, &states, *json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { job } => {
            let job = load(job)?;
            if dativo_core::streams::is_multi(&job) {
                let plans = dativo_runtime::streams::discover(&job)?;
                println!("ok: job `{}` — {} streams:", job.name(), plans.len());
                output::print_streams(&job, &plans, &[], false);
                return Ok(ExitCode::SUCCESS);
            }
            let store =
                StateStore::open_with(&state_dir(cli, Some(&job)), cli.state_url.as_deref())?;
            let schema = dativo_runtime::runner::check(&job, &store)?;
            println!("ok: job `{}` — source schema:", job.name());
            output::print_schema(&schema);
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            reader,
            writer,
            name,
            output,
            force,
        } => init::init(&init::InitOptions {
            reader: *reader,
            writer: *writer,
            name: name.as_deref(),
            output: output.as_deref(),
            force: *force,
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "dativo", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            job,
            no_progress,
            shard,
            shards,
            once,
            dry_run,
        } => {
            let shard = resolve_shard(shard.as_deref(), *shards)?;
            let mut job = load(job)?;
            if *dry_run {
                return dry_run_job(cli, &job, shard);
            }
            if *once {
                if let Some(m) = job.config.source.config.as_object_mut() {
                    if m.get("mode").and_then(serde_json::Value::as_str) == Some("cdc") {
                        m.insert("follow".into(), serde_json::Value::Bool(false));
                    }
                }
            }
            let store =
                StateStore::open_with(&state_dir(cli, Some(&job)), cli.state_url.as_deref())?;
            let cancel = CancelToken::new();
            let c = cancel.clone();
            ctrlc::set_handler(move || {
                if c.is_cancelled() {
                    eprintln!("second interrupt: exiting now");
                    std::process::exit(130);
                }
                eprintln!("interrupted: stopping; uncommitted data will be discarded, except by change data capture jobs, which commit what they read (press again to exit at once)");
                c.cancel();
            })
            .map_err(|e| Error::internal(format!("cannot install the signal handler: {e}")))?;
            let show_bar = !no_progress
                && cli.log_format == LogFormat::Text
                && std::io::stderr().is_terminal();
            let observer = output::Progress::new(show_bar);
            let opts = RunOptions {
                cancel,
                observer: &observer,
                run_id: None,
                shard,
            };
            if dativo_core::streams::is_multi(&job) {
                let dir = state_dir(cli, Some(&job));
                let url = cli.state_url.clone();
                let summary = dativo_runtime::streams::run_streams(
                    &job,
                    &store,
                    &|| StateStore::open_with(&dir, url.as_deref()),
                    &opts,
                )?;
                observer.finish();
                output::print_job_summary(
                    &job,
                    &summary,
                    cli.log_format == LogFormat::Json,
                    cli.verbose > 0,
                );
                return Ok(match (&summary.status, &summary.error) {
                    (RunStatus::Succeeded, _) => ExitCode::SUCCESS,
                    (RunStatus::Cancelled, _) => ExitCode::from(130),
                    (_, Some(e)) => ExitCode::from(e.kind().exit_code() as u8),
                    _ => ExitCode::FAILURE,
                });
            }
            let summary = dativo_runtime::run(&job, &store, &opts)?;
            observer.finish();
            output::print_summary(
                &job,
                &summary,
                cli.log_format == LogFormat::Json,
                cli.verbose > 0,
            );
            Ok(match (&summary.status, &summary.error) {
                (RunStatus::Succeeded, _) => ExitCode::SUCCESS,
                (_, Some(e)) => ExitCode::from(e.kind().exit_code() as u8),
                _ => ExitCode::FAILURE,
            })
        }
        Command::State(StateCommand::Show { job, stream }) => {
            let (job_name, dir) = job_ref(cli, job)?;
            let store = open_store_existing(cli, &dir)?;
            let name = match stream {
                Some(s) => dativo_core::streams::stream_key(&job_name, s),
                None => job_name.clone(),
            };
            let streams = if stream.is_none() {
                store.stream_states(&job_name)?
            } else {
                Vec::new()
            };
            if !streams.is_empty() {
                let v: Vec<serde_json::Value> = streams
                    .iter()
                    .map(|(s, st)| {
                        let reset = st.run_id == dativo_runtime::state_store::RESET_RUN_ID;
                        serde_json::json!({
                            "stream": s, "state": st.state, "run_id": st.run_id,
                            "updated_at": st.updated_at, "reset": reset,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"job": job_name, "streams": v})
                    )
                    .expect("serializable")
                );
                return Ok(ExitCode::SUCCESS);
            }
            match store.load_state(&name)? {
                Some(s) if s.run_id == dativo_runtime::state_store::RESET_RUN_ID => println!(
                    "job `{name}` has no committed state (reset at {}): the next run reads from the beginning",
                    s.updated_at
                ),
                Some(s) => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "job": name, "state": s.state, "run_id": s.run_id, "updated_at": s.updated_at
                    }))
                    .expect("serializable")
                ),
                None => println!("job `{name}` has no committed state: the next run reads from the beginning"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Reset { job, stream }) => {
            let (name, dir) = job_ref(cli, job)?;
            let store = open_store_existing(cli, &dir)?;
            // The job's lock: no run of the job (or of any stream of it) is going on.
            let _lock = store.lock(&name)?;
            if let Some(s) = stream {
                let key = dativo_core::streams::stream_key(&name, s);
                if store.reset_state(&key)? {
                    println!("reset the state of stream `{s}` of job `{name}`: its next run reads the table from the beginning");
                } else {
                    println!("stream `{s}` of job `{name}` had no committed state");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let streams = store.stream_states(&name)?;
            for (s, _) in &streams {
                store.reset_state(&dativo_core::streams::stream_key(&name, s))?;
            }
            if !streams.is_empty() {
                println!(
                    "reset the state of {} streams of job `{name}`: the next run reads every table from the beginning",
                    streams.len()
                );
            }
            if store.reset_state(&name)? {
                println!("reset the state of job `{name}`: the next run reads from the beginning (what the target holds stays; an appending writer appends everything again)");
            } else {
                println!("job `{name}` had no committed state");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Target(TargetCommand::Drop {
            job,
            stream,
            yes,
            dry_run,
        }) => {
            let job = load(job)?;
            if !*yes && !*dry_run {
                confirm_drop(&job)?;
            }
            let store =
                StateStore::open_with(&state_dir(cli, Some(&job)), cli.state_url.as_deref())?;
            let drops =
                dativo_runtime::maintain::drop_target(&job, &store, stream.as_deref(), *dry_run)?;
            output::print_drops(&job, &drops, *dry_run);
            Ok(ExitCode::SUCCESS)
        }
        Command::Maintain {
            job,
            compact,
            rewrite_manifests,
            expire_snapshots,
            remove_orphans,
            dry_run,
            json,
        } => {
            let job = load(job)?;
            let mut req = dativo_runtime::maintain::MaintainRequest::resolve(
                &job,
                *compact,
                *rewrite_manifests,
                *expire_snapshots,
                *remove_orphans,
            );
            req.dry_run = *dry_run;
            if req.is_empty() {
                return Err(job.error_at(
                    "maintenance",
                    "the `maintenance:` block enables no operation: add `compact: {}`, \
                     `expire_snapshots: {}` or `remove_orphans: {}`, or pass a flag",
                ));
            }
            let store =
                StateStore::open_with(&state_dir(cli, Some(&job)), cli.state_url.as_deref())?;
            let all = dativo_runtime::maintain::maintain_all(&job, &req, &store)?;
            if *json {
                // One list of reports (a job with `tables:`: each names its stream).
                let mut reports = Vec::new();
                for (stream, s) in &all {
                    for r in &s.reports {
                        let mut v = serde_json::to_value(r).expect("serializable");
                        if let Some(st) = stream {
                            v["stream"] = serde_json::Value::from(st.clone());
                        }
                        reports.push(v);
                    }
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("serializable")
                );
            } else {
                for (stream, s) in &all {
                    if let Some(st) = stream {
                        println!("stream {st}:");
                    }
                    output::print_maintenance(&job, s);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { job, limit, json } => {
            let (name, dir) = job_ref(cli, job)?;
            let store = open_store_existing(cli, &dir)?;
            let runs = store.runs(&name, *limit)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&runs).expect("serializable")
                );
            } else {
                output::print_runs(&name, &runs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Decrypt {
            job,
            files,
            output,
            format,
        } => crypto::decrypt(
            job,
            files,
            output.as_deref(),
            format.map(|f| f == DecryptFormat::Csv),
        ),
        Command::Verify { job } => crypto::verify(job),
        Command::Serve {
            jobs,
            listen,
            max_concurrent,
            grace,
            api_token,
            max_connections,
            http_header_timeout,
        } => {
            dativo_serve::serve(dativo_serve::ServeOptions {
                jobs_dir: jobs.clone(),
                listen: *listen,
                state_dir: state_dir(cli, None),
                state_url: cli.state_url.clone(),
                max_concurrent: *max_concurrent,
                grace: *grace,
                token: api_token.clone(),
                reload_every: std::time::Duration::from_secs(2),
                http: dativo_serve::HttpLimits {
                    max_connections: *max_connections,
                    header_timeout: *http_header_timeout,
                },
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(DeployCommand::Plugins { lock, out, base }) => {
            deploy::plugins_context(lock, out, base)
        }
        Command::Deploy(DeployCommand::Kubernetes {
            job,
            shards,
            image,
            namespace,
            secret,
            state_url_secret,
            serve,
            replicas,
            service_account,
            service_account_annotation,
            plugins_image,
        }) => {
            let text = deploy::kubernetes(&deploy::DeployOptions {
                job,
                shards: *shards,
                image,
                namespace: namespace.as_deref(),
                secret: secret.as_deref(),
                state_url_secret: state_url_secret.as_deref(),
                serve: *serve,
                replicas: *replicas,
                service_account: service_account.as_deref(),
                service_account_annotations: service_account_annotation,
                plugins_image: plugins_image.as_deref(),
            })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::List { installed: false }) => plugin_cmd::list(),
        Command::Plugins(PluginsCommand::List { installed: true }) => registry::list_installed(),
        Command::Plugin(PluginCommand::Keygen { publisher, out }) => {
            registry::keygen(publisher, out)
        }
        Command::Plugin(PluginCommand::Trust { key, list, remove }) => {
            registry::trust(key.as_deref(), *list, remove.as_deref())
        }
        Command::Plugin(PluginCommand::Package {
            dir,
            out,
            description,
            license,
            homepage,
            python,
        }) => registry::package(&registry::PackageOptions {
            dir,
            out: out.as_deref(),
            description: description.as_deref(),
            license: license.as_deref(),
            homepage: homepage.as_deref(),
            python: python.as_deref(),
        }),
        Command::Plugin(PluginCommand::Sign { artifact, key }) => registry::sign(artifact, key),
        Command::Plugin(PluginCommand::Verify { artifact }) => registry::verify(artifact),
        Command::Plugin(PluginCommand::Publish { artifact, index }) => {
            registry::publish(artifact, index)
        }
        Command::Plugin(PluginCommand::Yank { spec, index, undo }) => {
            registry::yank(spec, index, *undo)
        }
        Command::Plugin(PluginCommand::Search { term, index }) => {
            registry::search(term.as_deref().unwrap_or(""), index.as_deref())
        }
        Command::Plugin(PluginCommand::Info { name, index }) => {
            registry::info(name, index.as_deref())
        }
        Command::Plugin(PluginCommand::Install {
            specs,
            locked,
            index,
            lock,
            python,
        }) => registry::install(
            specs,
            *locked,
            &registry::InstallOptions {
                index: index.as_deref(),
                lock: lock.as_deref(),
                python: python.as_deref(),
            },
        ),
        Command::Plugin(PluginCommand::Update {
            names,
            index,
            lock,
            python,
        }) => registry::update(
            names,
            &registry::InstallOptions {
                index: index.as_deref(),
                lock: lock.as_deref(),
                python: python.as_deref(),
            },
        ),
        Command::Plugin(PluginCommand::Uninstall { spec, lock, python }) => {
            registry::uninstall(spec, lock.as_deref(), python.as_deref())
        }
        Command::Plugin(PluginCommand::Test {
            implementation,
            config,
            side,
        }) => plugin_cmd::test(
            implementation,
            config.as_deref(),
            side.map(|s| match s {
                SideArg::Reader => dativo_plugins::Side::Reader,
                SideArg::Writer => dativo_plugins::Side::Writer,
            }),
        ),
        Command::Plugin(PluginCommand::New {
            lang,
            name,
            dir,
            sdk_path,
            sdk_version,
        }) => plugin_cmd::new(
            *lang,
            name,
            dir.as_deref(),
            sdk_path.as_deref(),
            sdk_version.as_deref(),
        ),
    }
}
