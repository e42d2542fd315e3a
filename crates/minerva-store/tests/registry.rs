//! The model registry on the real default models, on both of its databases: a SQLite file
//! and a real PostgreSQL server (each test that runs on both is a module with a `sqlite`
//! and a `postgres` test).

mod postgres_server;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use minerva_store::{
    AccessKind, ImportMode, ImportOptions, ModelFormat, ModelId, ModelStatus, ModelStore, Registry, RegistryError,
    sha256_model,
};

const SMOLLM2: &str = "smollm2-135m-instruct";
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn default_models() -> PathBuf {
    Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva/models")
}

/// Where a test's registry lives.
#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// Runs each named test (a function of a [`Db`]) on SQLite and on PostgreSQL.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Db::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Db::Postgres)
            }
        }
    )*};
}

on_both_databases!(
    registry_survives_reopen_with_metadata_and_counts_intact,
    an_unchanged_model_is_checked_without_rehashing,
    a_model_whose_bytes_changed_is_refused_and_marked_until_restored,
    importing_a_garbage_file_is_a_typed_error_naming_it_and_leaves_nothing,
    importing_a_directory_model_copies_hashes_and_registers_it_once,
    importing_with_link_shares_the_file_instead_of_copying_it,
    access_events_older_than_the_retention_are_pruned,
    a_tag_shares_the_file_a_retag_keeps_the_old_version_and_rollback_restores_it,
    settings_are_kept_per_model_validated_and_removed_with_it,
    a_model_registered_before_history_was_kept_can_still_roll_back_after_a_retag,
);

/// A Minerva home in a temporary directory: `models/` and `registry.sqlite`, or a
/// PostgreSQL server of its own.
struct Home {
    dir: tempfile::TempDir,
    store: ModelStore,
    postgres: Option<(postgres_server::PostgresServer, String)>,
}

impl Home {
    fn new(db: Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("models"));
        std::fs::create_dir(store.root()).unwrap();
        let postgres = match db {
            Db::Sqlite => None,
            Db::Postgres => {
                let server = postgres_server::PostgresServer::start();
                let url = server.database("registry");
                Some((server, url))
            }
        };
        Self { dir, store, postgres }
    }

    fn registry(&self) -> Registry {
        let registry = match &self.postgres {
            Some((_, url)) => Registry::connect(url).unwrap(),
            None => Registry::open(&Registry::default_path(&self.store)).unwrap(),
        };
        registry.recover_imports(&self.store).unwrap();
        registry
    }

    /// Hard-links a default model file in (never written to: tests that modify a file copy it).
    fn link(&self, name: &str) {
        std::fs::hard_link(default_models().join(name), self.store.root().join(name)).unwrap();
    }

    /// Copies a default model file in.
    fn copy(&self, name: &str) -> PathBuf {
        let path = self.store.root().join(name);
        std::fs::copy(default_models().join(name), &path).unwrap();
        path
    }

    /// Every entry of the models directory.
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

fn registry_survives_reopen_with_metadata_and_counts_intact(db: Db) {
    let home = Home::new(db);
    home.link(&format!("{SMOLLM2}.gguf"));
    let smollm2 = id(SMOLLM2);
    {
        let registry = home.registry();
        let record = registry.register(&home.store, &smollm2, &mut |_, _| {}).unwrap();
        assert_eq!(record.sha256, SMOLLM2_SHA256);
        for at in [1_000, 2_000, 3_000] {
            registry.record_access(&smollm2, AccessKind::Request, at).unwrap();
        }
        registry.record_access(&smollm2, AccessKind::Preload, 4_000).unwrap();
        registry.record_load(&smollm2, 120).unwrap();
        registry.record_load(&smollm2, 80).unwrap();
    }
    let registry = home.registry();
    let records = registry.records().unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.id.as_str(), r.path.as_path()),
        (SMOLLM2, Path::new("smollm2-135m-instruct.gguf"))
    );
    assert_eq!(
        (r.format, r.architecture.as_str(), r.quantization.as_str()),
        (ModelFormat::Gguf, "llama", "Q4_1")
    );
    assert!(
        (134_000_000..136_000_000).contains(&r.parameter_count),
        "{}",
        r.parameter_count
    );
    assert_eq!(
        (r.size_bytes, r.sha256.as_str(), r.status),
        (98_362_432, SMOLLM2_SHA256, ModelStatus::Ok)
    );
    assert_eq!(
        (r.access_count, r.last_access),
        (3, Some(3_000)),
        "preloads are not requests"
    );
    assert_eq!((r.load_count, r.total_load_ms), (2, 200));
    let kinds: Vec<(i64, AccessKind)> = registry
        .events_since(2_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.at, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (2_000, AccessKind::Request),
            (3_000, AccessKind::Request),
            (4_000, AccessKind::Preload)
        ]
    );
}

#[test]
fn an_empty_file_is_migrated_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite");
    std::fs::write(&path, b"").unwrap();
    let registry = Registry::open(&path).unwrap();
    assert!(registry.records().unwrap().is_empty());
    drop(registry);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!((version, mode.as_str()), (5, "wal"));
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Registry::open(&path).unwrap_err();
    assert!(matches!(err, RegistryError::NewerSchema { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade Minerva"), "{err}");
}

fn an_unchanged_model_is_checked_without_rehashing(db: Db) {
    let home = Home::new(db);
    home.link(&format!("{SMOLLM2}.gguf"));
    let registry = home.registry();
    let mut hashed = 0u64;
    let first = registry
        .check_with_progress(&home.store, &id(SMOLLM2), &mut |done, _| hashed = done)
        .unwrap();
    assert_eq!(
        (first.sha256.as_str(), hashed),
        (SMOLLM2_SHA256, 98_362_432),
        "first sight hashes"
    );
    hashed = 0;
    let again = registry
        .check_with_progress(&home.store, &id(SMOLLM2), &mut |done, _| hashed = done)
        .unwrap();
    assert_eq!(
        (again.verified_at, hashed),
        (first.verified_at, 0),
        "size and mtime unchanged"
    );
}

fn a_model_whose_bytes_changed_is_refused_and_marked_until_restored(db: Db) {
    let home = Home::new(db);
    let path = home.copy(&format!("{SMOLLM2}.gguf"));
    let registry = home.registry();
    let smollm2 = id(SMOLLM2);
    registry.check(&home.store, &smollm2).unwrap();
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    };
    flip(&path);
    let err = registry.check(&home.store, &smollm2).unwrap_err();
    let RegistryError::HashMismatch { expected, actual, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(expected, SMOLLM2_SHA256);
    assert_ne!(actual, SMOLLM2_SHA256);
    assert!(
        err.to_string().contains("does not match its registered SHA-256"),
        "{err}"
    );
    let record = registry.record(&smollm2).unwrap().unwrap();
    assert_eq!(
        (record.status, record.mismatch_sha256.as_deref()),
        (ModelStatus::Mismatch, Some(actual.as_str()))
    );
    assert!(
        matches!(
            registry.check(&home.store, &smollm2),
            Err(RegistryError::HashMismatch { .. })
        ),
        "still refused on the next load"
    );
    let verified = registry.verify(&home.store, Some(&smollm2), &mut |_, _, _| {}).unwrap();
    assert_eq!(verified[0].status, ModelStatus::Mismatch);

    flip(&path);
    assert_eq!(
        registry.check(&home.store, &smollm2).unwrap().status,
        ModelStatus::Ok,
        "restored"
    );
}

#[test]
fn a_model_whose_file_is_gone_is_marked_missing() {
    let home = Home::new(Db::Sqlite);
    home.link(&format!("{SMOLLM2}.gguf"));
    let registry = home.registry();
    let smollm2 = id(SMOLLM2);
    registry.check(&home.store, &smollm2).unwrap();
    std::fs::remove_file(home.store.root().join(format!("{SMOLLM2}.gguf"))).unwrap();
    let err = registry.check(&home.store, &smollm2).unwrap_err();
    assert!(matches!(err, RegistryError::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains("smollm2-135m-instruct.gguf is missing"),
        "{err}"
    );
    assert_eq!(registry.record(&smollm2).unwrap().unwrap().status, ModelStatus::Missing);
    let verified = registry.verify(&home.store, None, &mut |_, _, _| {}).unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].status, ModelStatus::Missing);
}

fn importing_a_garbage_file_is_a_typed_error_naming_it_and_leaves_nothing(db: Db) {
    let home = Home::new(db);
    let junk = home.dir.path().join("junk.gguf");
    std::fs::write(&junk, b"<html>404 Not Found</html>").unwrap();
    let err = home
        .registry()
        .import(&home.store, &junk, &ImportOptions::default(), &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, RegistryError::Gguf(_)), "{err}");
    assert!(err.to_string().contains(&junk.display().to_string()), "{err}");
    assert!(err.to_string().contains("not a GGUF model file"), "{err}");
    assert!(home.listing().is_empty(), "{:?}", home.listing());
    assert!(home.registry().records().unwrap().is_empty());
}

fn importing_a_directory_model_copies_hashes_and_registers_it_once(db: Db) {
    let home = Home::new(db);
    let source = default_models().join("all-minilm-l6-v2");
    let registry = home.registry();
    let mut last = (0, 0);
    let record = registry
        .import(&home.store, &source, &ImportOptions::default(), &mut |done, total| {
            last = (done, total)
        })
        .unwrap();
    assert_eq!(record.id.as_str(), "all-minilm-l6-v2");
    assert_eq!(
        (record.format, record.architecture.as_str()),
        (ModelFormat::SentenceTransformers, "bert")
    );
    assert_eq!(record.sha256, sha256_model(&source, &mut |_, _| {}).unwrap());
    assert_eq!((last.0, last.1), (record.size_bytes, record.size_bytes));
    assert_eq!(home.listing(), ["all-minilm-l6-v2"], "no temporary files left");
    let entry = home.store.resolve(&record.id).unwrap();
    assert_eq!(entry.format, ModelFormat::SentenceTransformers);
    assert_eq!(registry.check(&home.store, &record.id).unwrap().sha256, record.sha256);

    let again = registry.import(&home.store, &source, &ImportOptions::default(), &mut |_, _| {});
    assert!(matches!(again, Err(RegistryError::AlreadyExists { .. })), "{again:?}");
}

fn importing_with_link_shares_the_file_instead_of_copying_it(db: Db) {
    let home = Home::new(db);
    let source = default_models().join(format!("{SMOLLM2}.gguf"));
    let options = ImportOptions {
        id: Some(id("tiny-chat")),
        mode: ImportMode::HardLink,
        ..Default::default()
    };
    let record = home
        .registry()
        .import(&home.store, &source, &options, &mut |_, _| {})
        .unwrap();
    assert_eq!(
        (record.id.as_str(), record.sha256.as_str()),
        ("tiny-chat", SMOLLM2_SHA256)
    );
    let imported = std::fs::metadata(home.store.root().join("tiny-chat.gguf")).unwrap();
    assert_eq!(imported.ino(), std::fs::metadata(&source).unwrap().ino());
}

fn access_events_older_than_the_retention_are_pruned(db: Db) {
    let home = Home::new(db);
    let registry = home.registry();
    let day = 24 * 3600 * 1000;
    registry.record_access(&id("a"), AccessKind::Request, day).unwrap();
    registry.record_access(&id("b"), AccessKind::Request, 5 * day).unwrap();
    registry.record_access(&id("c"), AccessKind::Request, 9 * day).unwrap();
    let kept: Vec<String> = registry
        .events_since(0)
        .unwrap()
        .into_iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(kept, ["b", "c"], "a is more than 7 days older than the newest event");
}

const GEMMA_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

fn a_tag_shares_the_file_a_retag_keeps_the_old_version_and_rollback_restores_it(db: Db) {
    use std::os::unix::fs::MetadataExt;
    let home = Home::new(db);
    home.link(&format!("{SMOLLM2}.gguf"));
    home.link("gemma-3-270m.gguf");
    let registry = home.registry();
    let chat = id("chat");

    let tagged = registry.tag(&home.store, &id(SMOLLM2), &chat).unwrap();
    assert_eq!(tagged.sha256, SMOLLM2_SHA256);
    let inode = |name: &str| std::fs::metadata(home.store.root().join(name)).unwrap().ino();
    assert_eq!(
        inode("chat.gguf"),
        inode(&format!("{SMOLLM2}.gguf")),
        "one copy on disk"
    );

    // Re-pointing the name keeps its old file as a version.
    let retagged = registry.tag(&home.store, &id("gemma-3-270m"), &chat).unwrap();
    assert_eq!(retagged.sha256, GEMMA_SHA256);
    assert_eq!(registry.check(&home.store, &chat).unwrap().sha256, GEMMA_SHA256);
    let history = registry.history(&chat).unwrap();
    let shas: Vec<&str> = history.iter().map(|h| h.sha256.as_str()).collect();
    assert_eq!(shas, [SMOLLM2_SHA256, GEMMA_SHA256]);
    assert!(history[1].origin.starts_with("tag of gemma-3-270m"), "{history:?}");
    // The same file again changes nothing.
    registry.tag(&home.store, &id("gemma-3-270m"), &chat).unwrap();
    assert_eq!(registry.history(&chat).unwrap().len(), 2);

    // Roll back even after the source name is gone: the kept version has the bytes.
    registry.remove(&home.store, &id(SMOLLM2)).unwrap();
    let back = registry.rollback(&home.store, &chat).unwrap();
    assert_eq!(back.sha256, SMOLLM2_SHA256);
    assert_eq!(registry.check(&home.store, &chat).unwrap().sha256, SMOLLM2_SHA256);
    assert_eq!(registry.history(&chat).unwrap().len(), 3);
    // And forward again: rollback goes to the digest before the current one.
    assert_eq!(registry.rollback(&home.store, &chat).unwrap().sha256, GEMMA_SHA256);

    // Removing the name drops its versions; only the listed models remain.
    registry.remove(&home.store, &chat).unwrap();
    let listing: Vec<String> = home.listing().into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert_eq!(listing, [".versions", "gemma-3-270m.gguf"]);
    assert_eq!(
        std::fs::read_dir(home.store.root().join(".versions")).unwrap().count(),
        0
    );
    assert!(registry.rollback(&home.store, &chat).is_err());
}

fn settings_are_kept_per_model_validated_and_removed_with_it(db: Db) {
    let home = Home::new(db);
    home.link(&format!("{SMOLLM2}.gguf"));
    let registry = home.registry();
    let smollm2 = id(SMOLLM2);
    assert!(
        registry.set_settings(&smollm2, &Default::default()).is_err(),
        "not registered yet"
    );
    registry.register(&home.store, &smollm2, &mut |_, _| {}).unwrap();
    let mut settings = registry.settings(&smollm2).unwrap();
    settings.set("num_ctx", Some("1024")).unwrap();
    settings.set("system", Some("Be terse.")).unwrap();
    assert!(settings.set("num_ctx", Some("a lot")).is_err());
    registry.set_settings(&smollm2, &settings).unwrap();
    drop(registry);
    let registry = home.registry();
    let read = registry.settings(&smollm2).unwrap();
    assert_eq!((read.num_ctx, read.system.as_deref()), (Some(1024), Some("Be terse.")));
    registry.remove(&home.store, &smollm2).unwrap();
    assert_eq!(registry.settings(&smollm2).unwrap(), Default::default());
}

fn a_model_registered_before_history_was_kept_can_still_roll_back_after_a_retag(db: Db) {
    let home = Home::new(db);
    home.link(&format!("{SMOLLM2}.gguf"));
    home.link("gemma-3-270m.gguf");
    let registry = home.registry();
    let smollm2 = id(SMOLLM2);
    // Found in the directory: a record, no history.
    registry.register(&home.store, &smollm2, &mut |_, _| {}).unwrap();
    assert!(registry.history(&smollm2).unwrap().is_empty());
    registry.tag(&home.store, &id("gemma-3-270m"), &smollm2).unwrap();
    assert_eq!(registry.history(&smollm2).unwrap().len(), 2);
    assert_eq!(registry.rollback(&home.store, &smollm2).unwrap().sha256, SMOLLM2_SHA256);
}
