//! The registry shared by replicas on a real PostgreSQL server: what one replica writes,
//! every other sees; replicas starting together migrate once; the database restarting,
//! refusing or being newer than us is a clear error, never a panic.

mod postgres_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use minerva_store::{AccessKind, AuditEntry, ModelId, ModelStatus, ModelStore, Registry, RegistryError};
use postgres_server::PostgresServer;

const SMOLLM2: &str = "smollm2-135m-instruct";
const GEMMA: &str = "gemma-3-270m";

fn default_models() -> PathBuf {
    Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva/models")
}

fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

/// A models directory (a shared volume, as the replicas of a cluster mount it) holding
/// SmolLM2 and Gemma, hard-linked from the default models.
fn shared_models() -> (tempfile::TempDir, ModelStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    for name in [SMOLLM2, GEMMA] {
        let file = format!("{name}.gguf");
        std::fs::hard_link(default_models().join(&file), store.root().join(&file)).unwrap();
    }
    (dir, store)
}

#[test]
fn replicas_sharing_the_database_see_each_others_names_settings_history_usage_and_audit() {
    let server = PostgresServer::start();
    let url = server.database("cluster");
    let (_dir, store) = shared_models();
    let a = Registry::connect(&url).unwrap();
    let b = Registry::connect(&url).unwrap();
    assert!(a.is_shared());
    assert_eq!(
        a.location(),
        format!("postgres://minerva@127.0.0.1:{}/cluster", server.port)
    );

    // A tag made through one replica is a model the other knows, with its history.
    a.check(&store, &id(SMOLLM2)).unwrap();
    let tagged = a.tag(&store, &id(SMOLLM2), &id("chat")).unwrap();
    let seen = b.record(&id("chat")).unwrap().expect("replica b knows the tag");
    assert_eq!(
        (seen.sha256.as_str(), seen.status),
        (tagged.sha256.as_str(), ModelStatus::Ok)
    );
    assert_eq!(b.check(&store, &id("chat")).unwrap().sha256, tagged.sha256);
    // Re-pointed through b; rolled back through a.
    b.tag(&store, &id(GEMMA), &id("chat")).unwrap();
    assert_eq!(a.history(&id("chat")).unwrap().len(), 2);
    assert_eq!(a.rollback(&store, &id("chat")).unwrap().sha256, tagged.sha256);
    assert_eq!(b.record(&id("chat")).unwrap().unwrap().sha256, tagged.sha256);

    // Settings set on one are what the other loads with.
    let mut settings = a.settings(&id("chat")).unwrap();
    settings.set("num_ctx", Some("1024")).unwrap();
    a.set_settings(&id("chat"), &settings).unwrap();
    assert_eq!(b.settings(&id("chat")).unwrap().num_ctx, Some(1024));

    // Usage from both replicas is one history: preloading sees the cluster's traffic.
    a.record_access(&id(SMOLLM2), AccessKind::Request, 1_000).unwrap();
    b.record_access(&id(SMOLLM2), AccessKind::Request, 2_000).unwrap();
    b.record_access(&id(GEMMA), AccessKind::Preload, 3_000).unwrap();
    let events: Vec<(String, i64)> = a
        .events_since(0)
        .unwrap()
        .into_iter()
        .map(|e| (e.id.to_string(), e.at))
        .collect();
    assert_eq!(
        events,
        [(SMOLLM2.into(), 1_000), (SMOLLM2.into(), 2_000), (GEMMA.into(), 3_000)]
    );
    let record = b.record(&id(SMOLLM2)).unwrap().unwrap();
    assert_eq!((record.access_count, record.last_access), (2, Some(2_000)));

    // One audit log.
    a.audit(&AuditEntry::now("tag", "chat", "cli:ann", "ok")).unwrap();
    b.audit(&AuditEntry::now("rollback", "chat", "key:0a1b2c3d", "ok"))
        .unwrap();
    let actions: Vec<String> = a.audit_since(0).unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["tag", "rollback"]);

    // An adapter registered through one replica: the other lists it, checks it, refuses
    // it once its file changed, and removes it for both.
    let adapters = store.root().join(minerva_store::ADAPTERS_DIR);
    std::fs::create_dir_all(&adapters).unwrap();
    std::fs::write(adapters.join("tone.gguf"), b"adapter bytes").unwrap();
    let registered = a
        .register_adapter(&store, &id("tone"), Some(&tagged.sha256), "finetune")
        .unwrap();
    assert_eq!(b.adapters().unwrap(), [registered.clone()]);
    assert_eq!(b.check_adapter(&store, &id("tone")).unwrap().sha256, registered.sha256);
    std::fs::write(adapters.join("tone.gguf"), b"adapter bytes, changed").unwrap();
    assert!(matches!(
        b.check_adapter(&store, &id("tone")),
        Err(RegistryError::AdapterMismatch { .. })
    ));
    assert!(a.remove_adapter(&store, &id("tone")).unwrap());
    assert!(b.adapter(&id("tone")).unwrap().is_none());
    assert!(!adapters.join("tone.gguf").exists());

    // Removed through one: gone for both.
    b.remove(&store, &id("chat")).unwrap();
    assert!(a.record(&id("chat")).unwrap().is_none());
    assert_eq!(a.settings(&id("chat")).unwrap(), Default::default());
}

#[test]
fn concurrent_writes_from_replicas_lose_nothing() {
    let server = PostgresServer::start();
    let url = server.database("busy");
    let (_dir, store) = shared_models();
    let replicas: Vec<Arc<Registry>> = (0..3).map(|_| Arc::new(Registry::connect(&url).unwrap())).collect();
    replicas[0].check(&store, &id(SMOLLM2)).unwrap();
    let writers: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(r, registry)| {
            let registry = Arc::clone(registry);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let batch: Vec<_> = (0..4)
                        .map(|j| (id(SMOLLM2), AccessKind::Request, 10_000 + r as i64 * 1_000 + i * 4 + j))
                        .collect();
                    registry.record_accesses(&batch).unwrap();
                    registry.record_load(&id(SMOLLM2), 1).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let record = replicas[1].record(&id(SMOLLM2)).unwrap().unwrap();
    assert_eq!(
        (record.access_count, record.load_count, record.total_load_ms),
        (600, 150, 150)
    );
    assert_eq!(replicas[2].events_since(0).unwrap().len(), 600);
}

#[test]
fn replicas_starting_together_migrate_the_database_once() {
    let server = PostgresServer::start();
    let url = server.database("fresh");
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Registry::connect(&url).map(|r| r.records().unwrap().len()))
        })
        .collect();
    for start in starts {
        assert_eq!(start.join().unwrap().unwrap(), 0);
    }
    assert_eq!(server.sql("fresh", "SELECT version FROM minerva_schema"), "5");
    assert_eq!(server.sql("fresh", "SELECT count(*) FROM minerva_schema"), "1");
    let tables = server.sql(
        "fresh",
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(
        tables,
        "access_events,adapters,audit,history,lineage,minerva_schema,models,pending_imports,settings"
    );
}

#[test]
fn a_database_written_by_a_newer_minerva_is_refused() {
    let server = PostgresServer::start();
    let url = server.database("newer");
    drop(Registry::connect(&url).unwrap());
    server.sql("newer", "UPDATE minerva_schema SET version = 99");
    let err = Registry::connect(&url).unwrap_err();
    assert!(matches!(err, RegistryError::NewerSchema { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade Minerva"), "{err}");
}

#[test]
fn the_registry_reconnects_after_the_database_restarts() {
    let mut server = PostgresServer::start();
    let url = server.database("restart");
    let (_dir, store) = shared_models();
    let registry = Registry::connect(&url).unwrap();
    registry.check(&store, &id(SMOLLM2)).unwrap();
    server.restart();
    // The call that finds the old connection cut may fail (cleanly); the next one
    // reconnects.
    if let Err(e) = registry.records() {
        assert!(matches!(e, RegistryError::Database { .. }), "{e}");
    }
    let records = registry.records().unwrap();
    assert_eq!(records.len(), 1);
    registry.record_access(&id(SMOLLM2), AccessKind::Request, 5).unwrap();

    // Down: a typed error naming the database (never its password), no panic.
    server.stop();
    let err = (0..2).map(|_| registry.records()).last().unwrap().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RegistryError::Database { .. }), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}/restart", server.port)),
        "{message}"
    );
    assert!(!message.contains(postgres_server::PASSWORD), "{message}");
}

#[test]
fn wrong_credentials_and_an_unreachable_server_are_clear_errors() {
    let server = PostgresServer::start();
    server.database("locked");
    let wrong = format!("postgres://minerva:not-the-password@127.0.0.1:{}/locked", server.port);
    let err = Registry::connect(&wrong).unwrap_err().to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Registry::connect(&format!("postgres://minerva@127.0.0.1:{port}/none"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("error connecting to server"), "{err}");

    let err = Registry::open_location("postgres://[not a url")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("model registry postgres://"), "{err}");
}

#[test]
fn a_model_file_missing_on_one_replica_is_not_marked_missing_for_all() {
    let server = PostgresServer::start();
    let url = server.database("volumes");
    let (_a_dir, a_store) = shared_models();
    let b_dir = tempfile::tempdir().unwrap();
    let b_store = ModelStore::new(b_dir.path().join("models"));
    std::fs::create_dir(b_store.root()).unwrap();
    let (a, b) = (Registry::connect(&url).unwrap(), Registry::connect(&url).unwrap());
    a.check(&a_store, &id(SMOLLM2)).unwrap();
    // Replica b has its own (empty) volume: it cannot load the model, and says so...
    let err = b.check(&b_store, &id(SMOLLM2)).unwrap_err();
    assert!(matches!(err, RegistryError::Missing { .. }), "{err}");
    // ...but the model is still fine where it is.
    assert_eq!(a.record(&id(SMOLLM2)).unwrap().unwrap().status, ModelStatus::Ok);
    assert_eq!(a.check(&a_store, &id(SMOLLM2)).unwrap().status, ModelStatus::Ok);
}

/// A CA, and a certificate for 127.0.0.1 and localhost it signed: (CA PEM, cert PEM, key PEM).
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_to_the_registry_trusts_the_ca_it_is_given_and_refuses_a_server_nobody_vouches_for() {
    let (ca, cert, key) = test_ca();
    let server = PostgresServer::start_tls(&cert, &key);
    let url = server.database("secure");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    // TLS required, the server's CA unknown: refused, with the reason.
    let err = Registry::connect(&format!("{url}?sslmode=require"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Given the CA (libpq's sslrootcert option), the registry works over TLS.
    let secure = format!("{url}?sslmode=require&sslrootcert={}", ca_file.display());
    let registry = Registry::connect(&secure).unwrap();
    assert!(registry.records().unwrap().is_empty());
    assert_eq!(
        registry.location(),
        format!("postgres://minerva@127.0.0.1:{}/secure", server.port)
    );
    let encrypted = server.sql(
        "secure",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'minerva'",
    );
    assert_eq!(encrypted, "1", "the registry's connection is encrypted");

    // A CA file that holds no certificate is a clear error.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let err = Registry::connect(&secure).unwrap_err().to_string();
    assert!(err.contains("no PEM certificate"), "{err}");
}
