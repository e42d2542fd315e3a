//! The shared registry: a PostgreSQL database every replica uses (`--registry
//! postgres://…`), through `tokio-postgres`, TLS through rustls on aws-lc-rs
//! (`sslmode=prefer` by default: TLS when the server offers it; `require` insists). The
//! server's certificate is checked against the Mozilla roots, plus the CAs of libpq's
//! `sslrootcert=FILE` option (which tokio-postgres does not read: it is taken out here).
//!
//! The registry's callers are synchronous (as with SQLite, a call blocks its thread for a
//! round trip). The connection's I/O is driven by a small runtime on a thread of its own;
//! callers wait on the client's futures, which only talk to that task through channels,
//! so this works from any thread, inside a Tokio runtime or not. A connection the server
//! closed (a restart, a failover) is made again on the next call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, Statement};

use super::{DbError, Row, Sql, Value};
use crate::registry::schema::{MIGRATIONS, VERSION};

/// Every write holds this transaction-scoped advisory lock: one writer at a time across
/// all replicas, as SQLite's `BEGIN IMMEDIATE` gives on one machine. ("minerva" in ASCII.)
const WRITER_LOCK: i64 = 0x6d69_6e65_7276_61;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A replica whose database stops answering (a partition) fails its calls after this.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Postgres {
    config: Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    runtime: tokio::runtime::Handle,
    conn: Mutex<Conn>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct Conn {
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Postgres {
    /// Connects to `url` and brings the database to the current schema; returns the
    /// schema version found (higher than ours: nothing was changed).
    pub(crate) fn connect(url: &str) -> Result<(Self, i64), DbError> {
        let (url, root_cert) = take_root_cert(url);
        let mut config: Config = url.parse().map_err(|e| DbError::Connect(format!("{e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("minerva");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbError::Connect(format!("starting the registry's connection runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("registry-postgres".into())
            .spawn(move || {
                // Ends (dropping the connection) when the registry is dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| DbError::Connect(format!("starting the registry's connection thread: {e}")))?;
        let db = Self {
            config,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(root_cert.as_deref())?),
            runtime: handle,
            conn: Mutex::new(Conn::default()),
            _stop: stop,
        };
        let found = db.migrate()?;
        Ok((db, found))
    }

    /// `postgres://user@host:port/db`: where the registry is, without its password.
    pub(crate) fn location(url: &str) -> String {
        let Ok(config) = take_root_cert(url).0.parse::<Config>() else {
            return "postgres://(invalid URL)".into();
        };
        let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                };
                match config.get_ports().get(i).or(config.get_ports().first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        format!(
            "postgres://{user}{}/{}",
            hosts.join(","),
            config.get_dbname().unwrap_or_default()
        )
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut conn = self.lock();
        let conn = self.connected(&mut conn)?;
        f(&mut Pg { conn })
    }

    pub(super) fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut conn = self.lock();
        let conn = self.connected(&mut conn)?;
        let mut tx = Transaction::begin(conn)?;
        let value = f(&mut Pg { conn: tx.conn() })?;
        tx.commit()?;
        Ok(value)
    }

    /// Applies the missing migrations in one transaction under the writer lock, so
    /// replicas starting together migrate once; `minerva_schema` counts them.
    fn migrate(&self) -> Result<i64, DbError> {
        let mut conn = self.lock();
        let conn = self.connected(&mut conn)?;
        let tx = Transaction::begin(conn)?;
        let client = tx.client();
        wait(client.batch_execute("CREATE TABLE IF NOT EXISTS minerva_schema (version BIGINT NOT NULL)"))?;
        let found: i64 = match wait(client.query_opt("SELECT version FROM minerva_schema", &[]))? {
            Some(row) => row.try_get(0)?,
            None => {
                wait(client.execute("INSERT INTO minerva_schema (version) VALUES (0)", &[]))?;
                0
            }
        };
        if found >= VERSION {
            return Ok(found);
        }
        for migration in &MIGRATIONS[found.max(0) as usize..] {
            wait(client.batch_execute(&ddl(migration)))?;
        }
        wait(client.execute("UPDATE minerva_schema SET version = $1", &[&VERSION]))?;
        tx.commit()?;
        Ok(found)
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        // A panic while holding the lock rolls back its transaction (Transaction's drop),
        // so a poisoned connection is still sound.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection, made (again) when there is none or the server closed it.
    fn connected<'a>(&self, conn: &'a mut Conn) -> Result<&'a mut Conn, DbError> {
        if conn.client.as_ref().is_none_or(Client::is_closed) {
            conn.statements.clear();
            conn.client = None;
            let (config, tls) = (self.config.clone(), self.tls.clone());
            let connecting = self.runtime.spawn(async move {
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %describe(&e), "registry database connection closed");
                    }
                });
                Ok::<_, tokio_postgres::Error>(client)
            });
            let client = wait(connecting).map_err(|e| DbError::Connect(format!("registry connection task: {e}")))??;
            conn.client = Some(client);
        }
        Ok(conn)
    }
}

impl Conn {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("connected() made the client")
    }
}

/// A transaction on the connection, holding the writer lock; rolled back unless committed
/// (also when the closure panics).
struct Transaction<'a> {
    conn: &'a mut Conn,
    open: bool,
}

impl<'a> Transaction<'a> {
    fn begin(conn: &'a mut Conn) -> Result<Self, DbError> {
        wait(conn.client().batch_execute("BEGIN"))?;
        let tx = Self { conn, open: true };
        wait(tx.client().execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK]))?;
        Ok(tx)
    }

    fn client(&self) -> &Client {
        self.conn.client()
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn
    }

    fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        wait(self.client().batch_execute("COMMIT"))?;
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = wait(self.client().batch_execute("ROLLBACK"));
        }
    }
}

/// Waits for one of the client's futures (see the module's note).
fn wait<F: Future>(future: F) -> F::Output {
    futures_executor::block_on(future)
}

struct Pg<'a> {
    conn: &'a mut Conn,
}

impl Pg<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(statement) = self.conn.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = wait(self.conn.client().prepare(&placeholders(sql)))?;
        self.conn.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Sql for Pg<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        Ok(wait(self.conn.client().execute(&statement, &params))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = wait(self.conn.client().query(&statement, &params))?;
        rows.iter().map(read_row).collect()
    }
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    let values = row
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let ty = column.type_();
            let value = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into()))
            } else if *ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into()))
            } else if *ty == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v.into()))
            } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            } else {
                return Err(DbError::Column {
                    index: i,
                    reason: format!("unexpected type {ty}"),
                });
            };
            Ok(value.unwrap_or(Value::Null))
        })
        .collect::<Result<_, DbError>>()?;
    Ok(Row(values))
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) => v.to_sql(ty, out),
            Self::Text(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `?N` → `$N`, outside string literals.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A migration in PostgreSQL's words: 64-bit integers, identity row ids, no `STRICT`
/// (PostgreSQL's columns are strictly typed anyway).
pub(super) fn ddl(sqlite: &str) -> String {
    sqlite
        .replace(
            "INTEGER PRIMARY KEY",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace("INTEGER", "BIGINT")
        .replace(") STRICT", ")")
}

/// `url` without its `sslrootcert=FILE` option, and the file. Both of libpq's forms: a
/// URL's query parameter, or a `key=value` word.
fn take_root_cert(url: &str) -> (String, Option<std::path::PathBuf>) {
    // The option's value, and the other parts of `parts`.
    fn split<'a>(parts: impl Iterator<Item = &'a str>) -> (Vec<&'a str>, Option<std::path::PathBuf>) {
        let (options, kept): (Vec<&str>, Vec<&str>) = parts.partition(|p| p.starts_with("sslrootcert="));
        let file = options
            .last()
            .map(|p| std::path::PathBuf::from(&p["sslrootcert=".len()..]));
        (kept, file)
    }
    if let Some((base, query)) = url.split_once('?')
        && url.contains("://")
    {
        let (kept, file) = split(query.split('&'));
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (url, file);
    }
    match split(url.split_whitespace()) {
        (kept, Some(file)) => (kept.join(" "), Some(file)),
        (_, None) => (url.to_owned(), None),
    }
}

/// rustls on aws-lc-rs with the Mozilla roots and the CAs of `root_cert` (PEM).
fn tls_config(root_cert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, DbError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let tls = |e: &dyn std::fmt::Display| DbError::Connect(format!("sslrootcert {}: {e}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| tls(&e))?;
        if certs.is_empty() {
            return Err(tls(&"no PEM certificate in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| tls(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Connect(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The server's message (and detail) rather than tokio-postgres' bare "db error".
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(&format!(": {message}"));
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_and_literals_are_kept() {
        assert_eq!(
            placeholders("INSERT INTO history (id, origin) SELECT ?1, 'why? because' WHERE x = ?12"),
            "INSERT INTO history (id, origin) SELECT $1, 'why? because' WHERE x = $12"
        );
    }

    #[test]
    fn migrations_map_to_postgres_types() {
        let ddl = ddl("CREATE TABLE t (seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, s TEXT) STRICT;");
        assert_eq!(
            ddl,
            "CREATE TABLE t (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, s TEXT);"
        );
    }

    #[test]
    fn the_root_certificate_option_is_taken_out_of_either_form() {
        assert_eq!(
            take_root_cert("postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem&application_name=x"),
            (
                "postgres://u@h/db?sslmode=require&application_name=x".to_owned(),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            take_root_cert("postgres://u@h/db?sslrootcert=ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("ca.pem".into()))
        );
        assert_eq!(
            take_root_cert("host=h user=u sslrootcert=ca.pem sslmode=require"),
            ("host=h user=u sslmode=require".to_owned(), Some("ca.pem".into()))
        );
        assert_eq!(
            take_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }

    #[test]
    fn the_location_hides_the_password() {
        assert_eq!(
            Postgres::location("postgres://minerva:s3cret@db.internal:5433/models?sslmode=require"),
            "postgres://minerva@db.internal:5433/models"
        );
    }
}
