//! The registry's database, SQLite (embedded, the default) or PostgreSQL (shared by
//! replicas), behind one small interface: statements with `?N` parameters in the SQL both
//! dialects share, values that are integers, text or NULL, and a transaction per write.
//!
//! - [`Backend::read`] runs a closure on the connection; [`Backend::write`] runs it in one
//!   transaction that holds the database's single writer slot: SQLite's `BEGIN IMMEDIATE`,
//!   or a transaction-scoped advisory lock in PostgreSQL, so writes from every replica are
//!   serialized exactly as two processes on one SQLite file are.
//! - The SQL is written once. PostgreSQL gets `$N` for `?N`; the migrations' three
//!   SQLite-only words are mapped in [`postgres::ddl`].

mod postgres;
mod sqlite;

use std::fmt;

pub(crate) use postgres::Postgres;
pub(crate) use sqlite::Sqlite;

/// A parameter or column value: the registry stores only integers and text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<std::borrow::Cow<'_, str>> for Value {
    fn from(v: std::borrow::Cow<'_, str>) -> Self {
        Self::Text(v.into_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_deref().map_or(Self::Null, Into::into)
    }
}

impl From<&i64> for Value {
    fn from(v: &i64) -> Self {
        Self::Int(*v)
    }
}

/// The parameters of a statement: `args![a, b]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::registry::db::Value::from($v)),*]
    };
}
pub(crate) use args;

/// A result row.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `index` as `T`.
    pub(crate) fn get<T: FromValue>(&self, index: usize) -> Result<T, DbError> {
        let value = self.0.get(index).ok_or(DbError::Column {
            index,
            reason: "no such column".into(),
        })?;
        T::from_value(value).ok_or_else(|| DbError::Column {
            index,
            reason: format!("unexpected value {value:?}"),
        })
    }
}

/// A Rust type a column converts to.
pub(crate) trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// What the database said.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error (its message, and the server's detail where it sent one).
    #[error("{}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A connection could not be made or set up (TLS, the URL).
    #[error("{0}")]
    Connect(String),
    /// A column held a value of another type than the registry wrote.
    #[error("column {index}: {reason}")]
    Column { index: usize, reason: String },
}

impl DbError {
    /// The registry's database rejected a write because it is full (a disk or quota).
    pub fn is_full(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            Self::Postgres(e) => e
                .code()
                .is_some_and(|c| *c == tokio_postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }
}

/// One connection (or transaction) the registry's statements run on.
pub(crate) trait Sql {
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Runs a query; returns its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError>;
    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
}

/// Where the registry lives.
pub(crate) enum Backend {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(_) => f.write_str("Sqlite"),
            Self::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

impl Backend {
    /// Runs `f` on the connection (reads see committed data).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        match self {
            Self::Sqlite(db) => db.read(f),
            Self::Postgres(db) => db.read(f),
        }
    }

    /// Runs `f` in one transaction holding the single writer slot; commits when it
    /// returns `Ok`, rolls back otherwise.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        match self {
            Self::Sqlite(db) => db.write(f),
            Self::Postgres(db) => db.write(f),
        }
    }
}
