//! MySQL and MariaDB as a [`Dialect`]: one consistent snapshot started together on the
//! planner and every reading connection, catalog queries on `information_schema`, and rows
//! over the binary protocol of prepared statements decoded into Arrow.

use std::sync::Arc;
use std::time::Duration;

use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{Conn, DriverError, Opts, OptsBuilder, SslOpts, Value};

use dativo_core::{secrets, Error, Result, Shard};

use super::types::{field_for, kind_for, type_name as type_name_of, MyDecoder, MyKind};
use crate::keyset::{
    Column, ConnectionOptions, Described, Dialect, Emitter, KeyType, ReadSpec, SqlConfig, SslMode,
    Syntax, Unsupported,
};

/// The `mysql` reader's own keys: none beyond the connection and the shared ones.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MySqlOptions {}

/// The MySQL dialect: the planning connection and the reading ones, on one snapshot.
pub struct MySql {
    planner: Conn,
    /// Reading connections, handed to the reading threads by [`Dialect::read`].
    workers: Vec<Conn>,
}

/// Schemas (databases) of the user's tables: the system ones left out.
const MY_USER_SCHEMAS: &str =
    "TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')";

impl Dialect for MySql {
    const SQL: Syntax = Syntax::new(
        "mysql",
        &["mysql://", "mariadb://"],
        "mysql://user@host:3306/db",
    )
    .backslash_escapes()
    .ident_quote('`')
    .hash_shards_only()
    .orderable("an integer, decimal, date, datetime or string");
    const TEXT: MyKind = MyKind::Text;
    type Options = MySqlOptions;
    type Kind = MyKind;

    fn check(_: &MySqlOptions) -> Result<()> {
        Ok(())
    }

    /// With `partitions > 1` the source is read-locked while the connections start their
    /// snapshots (`LOCK TABLES`, or `FLUSH TABLES WITH READ LOCK` for a query), so all see
    /// the same data.
    fn open(config: &SqlConfig<MySqlOptions>) -> Result<Self> {
        let (opts, what) = driver_opts(&config.connection)?;
        let (partitions, table) = (config.shared.partitions, config.shared.table.as_deref());
        let connect = || {
            Conn::new(opts.clone())
                .map_err(|e| classify(e, &format!("connecting to MySQL at {what}"), true))
        };
        let start = |c: &mut Conn| {
            c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .map_err(|e| map_error(e, "starting the snapshot"))
        };
        let mut locker = None;
        if partitions > 1 {
            let mut l = connect()?;
            let lock = match table {
                Some(t) => format!("LOCK TABLES {} READ", Self::table_ref(t)),
                None => "FLUSH TABLES WITH READ LOCK".into(),
            };
            l.query_drop(&lock).map_err(|e| {
                map_error(e, "locking the source briefly to start one snapshot on every connection (needs LOCK TABLES, or RELOAD for a query)")
            })?;
            locker = Some(l);
        }
        let mut planner = connect()?;
        start(&mut planner)?;
        let mut workers = Vec::new();
        for _ in 0..partitions {
            let mut w = connect()?;
            start(&mut w)?;
            workers.push(w);
        }
        if let Some(mut l) = locker {
            l.query_drop("UNLOCK TABLES")
                .map_err(|e| map_error(e, "unlocking"))?;
        }
        Ok(MySql { planner, workers })
    }

    fn rows(&mut self, sql: &str, doing: &str) -> Result<Vec<Vec<Option<String>>>> {
        let rows: Vec<mysql::Row> = self.planner.query(sql).map_err(|e| map_error(e, doing))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                r.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        Value::NULL => None,
                        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                    })
                    .collect()
            })
            .collect())
    }

    fn describe(&mut self, sql: &str, what: &str) -> Result<Vec<Described<MyKind>>> {
        let stmt = self
            .planner
            .prep(sql)
            .map_err(|e| map_error(e, &format!("reading the columns of {what}")))?;
        self.planner
            .exec_drop(&stmt, ())
            .map_err(|e| map_error(e, &format!("reading {what}")))?;
        let columns = stmt.columns();
        let described = columns.iter().map(|c| {
            let name = c.name_str();
            match kind_for(c) {
                Ok(kind) => Ok(column(&name, type_name_of(c), kind)),
                Err(type_name) => Err(Unsupported {
                    as_text: Box::new(text_column(c, &name, &type_name)),
                    type_name,
                }),
            }
        });
        Ok(described.collect())
    }

    fn as_text(expr: &str) -> String {
        format!("CAST({expr} AS CHAR)")
    }

    fn not_null_sql(table: &str, column: &str) -> String {
        format!(
            "SELECT 'yes' FROM information_schema.COLUMNS WHERE {} AND COLUMN_NAME = {} AND IS_NULLABLE = 'NO'",
            table_filter(table),
            Self::lit(column)
        )
    }

    fn not_null_columns_sql(table: &str) -> String {
        format!(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE {} AND IS_NULLABLE = 'NO' \
             ORDER BY ORDINAL_POSITION",
            table_filter(table)
        )
    }

    // InnoDB's sampled estimate (information_schema.TABLES.TABLE_ROWS).
    fn estimate_rows_sql(table: &str) -> Option<String> {
        Some(format!(
            "SELECT CAST(TABLE_ROWS AS CHAR) FROM information_schema.TABLES WHERE {}",
            table_filter(table)
        ))
    }

    fn tables_sql() -> String {
        format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, CAST(TABLE_ROWS AS CHAR), \
             CAST(DATA_LENGTH + INDEX_LENGTH AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND {MY_USER_SCHEMAS} ORDER BY 1, 2"
        )
    }

    fn columns_sql() -> String {
        format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE, \
             CASE WHEN c.IS_NULLABLE = 'NO' THEN 't' ELSE 'f' END, CAST(k.ORDINAL_POSITION AS CHAR) \
             FROM information_schema.COLUMNS c \
             JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA \
               AND t.TABLE_NAME = c.TABLE_NAME AND t.TABLE_TYPE = 'BASE TABLE' \
             LEFT JOIN information_schema.KEY_COLUMN_USAGE k ON k.TABLE_SCHEMA = c.TABLE_SCHEMA \
               AND k.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME \
               AND k.CONSTRAINT_NAME = 'PRIMARY' \
             WHERE {} ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION",
            MY_USER_SCHEMAS.replace("TABLE_SCHEMA", "c.TABLE_SCHEMA")
        )
    }

    fn primary_key_sql(table: &str) -> String {
        format!(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE {} \
             AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
            table_filter(table)
        )
    }

    fn row_hash(pk: &[String], cursor: &str) -> String {
        let mut parts: Vec<String> = pk.iter().map(|k| Self::ident(k)).collect();
        parts.push(Self::ident(cursor));
        format!("MD5(CONCAT_WS('|', {}))", parts.join(", "))
    }

    fn hash_shard(keys: &[String], shard: Shard) -> String {
        let (n, i) = (shard.count, shard.index);
        format!("MOD(CRC32(CONCAT_WS('|', {})), {n}) = {i}", keys.join(", "))
    }

    /// The ranges are dealt to the reading connections in turn; each reads its ranges one
    /// after the other.
    fn read(&mut self, reads: Vec<(usize, String)>, spec: Arc<ReadSpec<MyKind>>) -> Result<()> {
        let workers = std::mem::take(&mut self.workers);
        let mut assigned: Vec<Vec<(usize, String)>> = vec![Vec::new(); workers.len()];
        for (k, read) in reads.into_iter().enumerate() {
            let n = assigned.len();
            match assigned.get_mut(k % n.max(1)) {
                Some(work) => work.push(read),
                None => {
                    return Err(Error::internal(
                        "the MySQL reading connections were used already",
                    ))
                }
            }
        }
        for (w, (mut conn, work)) in workers.into_iter().zip(assigned).enumerate() {
            spec.spawn(format!("dativo-mysql-{w}"), move |spec| {
                work.into_iter()
                    .try_for_each(|(range, sql)| read_range(spec, &mut conn, range, &sql))
            })?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.planner
            .query_drop("COMMIT")
            .map_err(|e| map_error(e, "ending the snapshot"))
    }
}

/// `TABLE_SCHEMA = … AND TABLE_NAME = …` for `db.table` or `table` (in the current database).
fn table_filter(table: &str) -> String {
    let (schema, name) = match table.split_once('.') {
        Some((s, t)) => (MySql::lit(s), MySql::lit(t)),
        None => ("DATABASE()".to_string(), MySql::lit(table)),
    };
    format!("TABLE_SCHEMA = {schema} AND TABLE_NAME = {name}")
}

/// A column of kind `kind`: how it computes and orders as a key. Batches are cut where the
/// key's value changes, so SQL equality must mean value equality: strings are compared as
/// BINARY (MySQL's default collations ignore case), and floats and binary columns cannot
/// order a read.
fn column(name: &str, type_name: String, kind: MyKind) -> Column<MyKind> {
    let quoted = MySql::ident(name);
    let key = match kind {
        MyKind::I8 | MyKind::I16 | MyKind::I32 | MyKind::I64 | MyKind::Bit => KeyType::Int,
        MyKind::Decimal(_, s) => KeyType::Decimal(s as u8),
        MyKind::F32 | MyKind::F64 => KeyType::Float,
        MyKind::Date => KeyType::Date,
        MyKind::DateTime => KeyType::Timestamp { zoned: false },
        MyKind::Timestamp => KeyType::Timestamp { zoned: true },
        MyKind::Text | MyKind::Json | MyKind::Binary | MyKind::Time => KeyType::Other,
    };
    let order = match kind {
        MyKind::F32 | MyKind::F64 | MyKind::Binary => None,
        MyKind::Text | MyKind::Json => Some(format!("BINARY {quoted}")),
        _ => Some(quoted.clone()),
    };
    Column {
        field: field_for(name, kind),
        select: quoted,
        name: name.to_string(),
        type_name,
        kind,
        key,
        order,
    }
}

/// An unsupported column read as text: geometries as WKT (they have no CHAR cast), the rest
/// cast to CHAR.
fn text_column(c: &mysql::Column, name: &str, type_name: &str) -> Column<MyKind> {
    let quoted = MySql::ident(name);
    let text = match c.column_type() {
        ColumnType::MYSQL_TYPE_GEOMETRY => format!("ST_AsText({quoted})"),
        _ => format!("CAST({quoted} AS CHAR)"),
    };
    Column {
        select: format!("{text} AS {quoted}"),
        ..column(name, type_name.to_string(), MyKind::Text)
    }
}

/// Read one range over `conn` into batches.
fn read_range(spec: &ReadSpec<MyKind>, conn: &mut Conn, range: usize, sql: &str) -> Result<()> {
    let mut decoders: Vec<MyDecoder> = spec
        .kinds
        .iter()
        .map(|k| MyDecoder::new(*k, spec.bound.rows))
        .collect();
    let stmt = conn
        .prep(sql)
        .map_err(|e| map_error(e, "preparing the read"))?;
    let result = conn
        .exec_iter(&stmt, ())
        .map_err(|e| map_error(e, "reading"))?;
    let mut em = Emitter::new(spec, range);
    let mut last_key: Option<Value> = None;
    for row in result {
        let row = row.map_err(|e| map_error(e, "reading rows"))?;
        let key = spec.key.map(|k| row.as_ref(k).unwrap_or(&Value::NULL));
        em.cut(&mut decoders, || last_key.as_ref() != key)?;
        if let Some(k) = key {
            last_key = Some(k.clone());
        }
        let mut bytes = 0;
        for (i, d) in decoders.iter_mut().enumerate() {
            let v = row.as_ref(i).unwrap_or(&Value::NULL);
            d.append(v).map_err(|m| em.value_error(i, &m))?;
            bytes += match v {
                Value::Bytes(b) => 4 + b.len(),
                _ => 8,
            };
        }
        em.row(bytes);
        if em.stopped() {
            return Ok(());
        }
    }
    em.end(&mut decoders)
}

/// The driver's options from the connection keys, and `host:port/db` for messages. The
/// session runs in UTC, with utf8mb4.
pub(crate) fn driver_opts(c: &ConnectionOptions) -> Result<(Opts, String)> {
    let mut b = match &c.url {
        Some(u) => {
            let u = u.expose().replacen("mariadb://", "mysql://", 1);
            OptsBuilder::from_opts(Opts::from_url(&u).map_err(|e| {
                Error::config(format!(
                    "invalid MySQL URL: {}",
                    secrets::scrub(&e.to_string())
                ))
                .with_key_path("url")
                .with_source(e)
            })?)
        }
        None => OptsBuilder::new().ip_or_hostname(Some("127.0.0.1")),
    };
    if let Some(h) = &c.host {
        b = b.ip_or_hostname(Some(h.clone()));
    }
    if let Some(p) = c.port {
        b = b.tcp_port(p);
    }
    if let Some(u) = &c.user {
        b = b.user(Some(u.clone()));
    }
    if let Some(p) = &c.password {
        b = b.pass(Some(p.expose().to_string()));
    }
    if let Some(d) = &c.database {
        b = b.db_name(Some(d.clone()));
    }
    let ssl = match c.sslmode.unwrap_or(SslMode::Disable) {
        SslMode::Disable | SslMode::Prefer => None,
        SslMode::Require => Some(SslOpts::default().with_danger_accept_invalid_certs(true)),
        SslMode::VerifyCa => Some(SslOpts::default().with_danger_skip_domain_validation(true)),
        SslMode::VerifyFull => Some(SslOpts::default()),
    };
    let ssl = ssl.map(|s| match &c.sslrootcert {
        Some(p) => s.with_root_cert_path(Some(std::path::PathBuf::from(p))),
        None => s,
    });
    let timeout = c
        .connect_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(30));
    b = b
        .ssl_opts(ssl)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(timeout))
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
    let opts: Opts = b.into();
    let what = format!(
        "{}:{}/{}",
        opts.get_ip_or_hostname(),
        opts.get_tcp_port(),
        opts.get_db_name().unwrap_or("")
    );
    Ok((opts, what))
}

/// Map a driver error to a dativo error with a clear message, keeping it as the cause.
/// Classified by the driver's typed errors, never by message text: the server's error code,
/// the I/O error's kind, the driver's own error.
pub fn map_error(e: mysql::Error, doing: &str) -> Error {
    classify(e, doing, false)
}

/// `connecting`: the error ended an attempt to connect, where an I/O or protocol failure
/// means the server was not reached.
fn classify(e: mysql::Error, doing: &str, connecting: bool) -> Error {
    use std::io::ErrorKind as K;
    let text = secrets::scrub(&e.to_string());
    let err = match &e {
        mysql::Error::MySqlError(se) => {
            server_error(se.code, format!("{doing}: {}", secrets::scrub(&se.message)))
        }
        mysql::Error::DriverError(
            DriverError::CouldNotConnect(_) | DriverError::ConnectTimeout,
        )
        | mysql::Error::TlsError(_) => Error::connect(format!("{doing}: {text}")),
        mysql::Error::IoError(io)
            if connecting
                || matches!(
                    io.kind(),
                    K::ConnectionRefused
                        | K::TimedOut
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                        | K::AddrNotAvailable
                ) =>
        {
            Error::connect(format!("{doing}: {text}"))
        }
        mysql::Error::CodecError(_) if connecting => Error::connect(format!("{doing}: {text}")),
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => {
            Error::transient(format!("{doing}: the connection was lost ({text})"))
        }
        mysql::Error::UrlError(_) => Error::config(format!("{doing}: {text}")).with_key_path("url"),
        _ => Error::transient(format!("{doing}: {text}")),
    };
    err.with_source(e)
}

/// A server's error, by its code.
fn server_error(code: u16, msg: String) -> Error {
    match code {
        // Access denied (user/password, database, no password for a user that needs one).
        1045 | 1044 | 1698 => Error::auth(format!(
            "{msg} (authentication failed: check user and password)"
        )),
        // Missing table/column privilege, or a privilege like RELOAD.
        1142 | 1143 | 1227 => Error::auth(format!(
            "{msg} (permission denied: GRANT SELECT to the user)"
        )),
        1146 => Error::schema(format!("{msg} (check `table` / `query`)")),
        1049 => Error::config(format!("{msg} (check the database name)")),
        1054 | 1064 => Error::config(msg),
        // Lock wait timeout, deadlock, query interrupted, connection killed, server gone or
        // lost, shutting down, too many connections.
        1205 | 1213 | 1317 | 1927 | 2006 | 2013 | 1053 | 1040 => Error::transient(msg),
        _ => Error::data(msg),
    }
}
