//! The registry's schema, as an ordered list of migrations.
//!
//! The database holds the number of migrations applied (SQLite: `PRAGMA user_version`;
//! PostgreSQL: the `minerva_schema` table). Opening a database applies the missing ones in
//! one transaction, so a crash leaves either the old schema or the new one. Append new
//! migrations; never edit one that has shipped. They are written in SQLite's words and
//! mapped for PostgreSQL (`db/postgres.rs`, `ddl`): keep to INTEGER, TEXT and `STRICT`.

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: models, access log, import journal.
    "CREATE TABLE models (
        id TEXT PRIMARY KEY NOT NULL,
        path TEXT NOT NULL,
        format TEXT NOT NULL,
        architecture TEXT NOT NULL,
        parameter_count INTEGER NOT NULL,
        quantization TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        modified_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        mismatch_sha256 TEXT,
        added_at INTEGER NOT NULL,
        verified_at INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ok', 'mismatch', 'missing')),
        access_count INTEGER NOT NULL DEFAULT 0,
        last_access INTEGER,
        load_count INTEGER NOT NULL DEFAULT 0,
        total_load_ms INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE access_events (
        seq INTEGER PRIMARY KEY,
        model_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('request', 'preload'))
    ) STRICT;
    CREATE INDEX access_events_at ON access_events (at);
    -- An import whose row is committed but whose file may still carry its temporary
    -- name; finished (renamed) when the registry next recovers imports.
    CREATE TABLE pending_imports (
        id TEXT PRIMARY KEY NOT NULL,
        temp_name TEXT NOT NULL,
        final_name TEXT NOT NULL
    ) STRICT;",
    // Where a model Minerva made came from (a quantization of which digest, to which
    // type), with the quality report measured when it was made.
    "CREATE TABLE lineage (
        id TEXT PRIMARY KEY NOT NULL,
        source_id TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,
        operation TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        report TEXT
    ) STRICT;",
    // Per-model settings (registry/settings.rs), and every digest a name pointed at.
    "CREATE TABLE settings (
        id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (id, key)
    ) STRICT;
    CREATE TABLE history (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        at INTEGER NOT NULL,
        origin TEXT NOT NULL
    ) STRICT;
    CREATE INDEX history_id ON history (id, seq);",
    // Administrative actions (registry/audit.rs).
    "CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        actor TEXT NOT NULL,
        outcome TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_at ON audit (at);",
    // LoRA adapters of `adapters/` (registry/adapters.rs).
    "CREATE TABLE adapters (
        name TEXT PRIMARY KEY NOT NULL,
        sha256 TEXT NOT NULL,
        base_sha256 TEXT,
        size_bytes INTEGER NOT NULL,
        modified_ns INTEGER NOT NULL,
        added_at INTEGER NOT NULL,
        origin TEXT NOT NULL
    ) STRICT;",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;
