//! Pulls of the real SmolLM2 file from a local hub, registry and file server, with
//! dropped connections, a lying hash, 404s, offline mode and concurrent pulls.

mod hub;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls;

use hub::{FakeHub, HubFile};
use minerva_pull::{Endpoints, PullError, PullEvent, PullOptions, pull};
use minerva_store::{ModelId, ModelStore, Registry};

const REPO: &str = "test/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct-Q8_0.gguf";

fn models_dir() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    home.join("models")
}

fn smollm2() -> HubFile {
    static BYTES: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| Arc::new(std::fs::read(models_dir().join("smollm2-135m-instruct.gguf")).unwrap()));
    HubFile::new(bytes.clone())
}

struct Home {
    _dir: tempfile::TempDir,
    store: ModelStore,
    registry: Registry,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("models"));
        let registry = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        Self {
            _dir: dir,
            store,
            registry,
        }
    }

    fn pull(&self, hub: &FakeHub, source: &str) -> Result<minerva_pull::Pulled, PullError> {
        self.pull_with(source, &options(hub))
    }

    fn pull_with(&self, source: &str, options: &PullOptions) -> Result<minerva_pull::Pulled, PullError> {
        pull(&self.store, &self.registry, source, options, &mut |_| {})
    }

    /// Every entry of the models directory but lock files.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store.root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| !n.ends_with(".lock"));
        names.sort();
        names
    }
}

fn options(hub: &FakeHub) -> PullOptions {
    PullOptions {
        name: None,
        sha256: None,
        offline: false,
        ca_file: None,
        endpoints: Endpoints {
            hub: hub.url.clone(),
            hub_token: None,
            registry: hub.url.clone(),
        },
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_hub_pull_resumes_after_a_dropped_connection_and_registers_the_verified_file() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_repo_file(REPO, FILE, file.clone());
    hub.add_repo_file(REPO, "README.md", HubFile::new(Arc::new(b"# readme".to_vec())));
    hub.drop_next_download_after(&file, 10 << 20);
    let home = Home::new();
    let mut last_progress = (0, None);
    let pulled = pull(
        &home.store,
        &home.registry,
        &format!("hf.co/{REPO}:Q8_0"),
        &options(&hub),
        &mut |event| {
            if let PullEvent::Downloading { done, total, .. } = event {
                last_progress = (done, total);
            }
        },
    )
    .unwrap();
    assert!(pulled.downloaded);
    assert_eq!(pulled.record.id.as_str(), "smollm2-135m-instruct:q8_0");
    assert_eq!(pulled.record.sha256, file.sha256);
    let len = file.bytes.len() as u64;
    assert_eq!(last_progress, (len, Some(len)));
    // The first GET was cut after 10 MiB (the client may have received a little less
    // before the connection dropped); the second asked for the rest only.
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[0].1, None);
    let resumed_at: u64 = downloads[1]
        .1
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no range in {downloads:?}"));
    assert!(resumed_at > 0 && resumed_at <= 10 << 20, "{downloads:?}");
    let entry = home.store.resolve(&pulled.record.id).unwrap();
    assert!(same_bytes(
        &entry.path,
        &models_dir().join("smollm2-135m-instruct.gguf")
    ));
    assert_eq!(
        home.files(),
        ["smollm2-135m-instruct:q8_0.gguf"],
        "no partial file left"
    );

    // Pulling it again downloads nothing.
    let again = home.pull(&hub, &format!("hf.co/{REPO}:q8_0")).unwrap();
    assert!(!again.downloaded);
    assert_eq!(hub.downloads().len(), 2);
}

#[test]
fn a_partial_file_left_by_an_interrupted_pull_is_resumed_with_a_range() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_repo_file(REPO, FILE, file.clone());
    let home = Home::new();
    std::fs::create_dir_all(home.store.root()).unwrap();
    // What a pull killed after 5 MiB leaves behind.
    std::fs::write(
        home.store.root().join(format!(".pull-{}.partial", file.sha256)),
        &file.bytes[..5 << 20],
    )
    .unwrap();
    let mut options = options(&hub);
    options.name = Some(ModelId::new("smollm2").unwrap());
    let pulled = home.pull_with(&format!("hf.co/{REPO}/{FILE}"), &options).unwrap();
    assert_eq!(pulled.record.sha256, file.sha256);
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(
        downloads[0].1.as_deref(),
        Some(format!("bytes={}-", 5u64 << 20).as_str())
    );
}

#[test]
fn a_lying_hash_is_refused_naming_both_digests_and_nothing_is_listed() {
    let hub = FakeHub::start();
    let mut file = smollm2();
    file.claimed_sha256 = "ab".repeat(32);
    hub.add_repo_file(REPO, FILE, file.clone());
    let home = Home::new();
    let err = home.pull(&hub, &format!("hf.co/{REPO}")).unwrap_err();
    let PullError::HashMismatch { expected, actual, .. } = &err else {
        panic!("expected a hash mismatch, got {err}")
    };
    assert_eq!(
        (expected.as_str(), actual.as_str()),
        (file.claimed_sha256.as_str(), file.sha256.as_str())
    );
    assert!(err.to_string().contains(&file.sha256) && err.to_string().contains(&file.claimed_sha256));
    assert!(home.store.list().unwrap().is_empty());
    assert!(home.registry.records().unwrap().is_empty());
    assert!(home.files().is_empty(), "the partial was deleted: {:?}", home.files());
}

#[test]
fn registry_and_url_pulls_name_their_models_and_a_url_needs_a_digest() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_manifest("library/smollm2:135m", file.clone());
    hub.add_plain("SmolLM2.gguf", file.clone());
    let home = Home::new();
    let pulled = home.pull(&hub, "ollama.com/smollm2:135m").unwrap();
    assert_eq!(pulled.record.id.as_str(), "smollm2:135m");
    assert_eq!(pulled.record.sha256, file.sha256);

    let url = format!("{}/files/SmolLM2.gguf", hub.url);
    let err = home.pull(&hub, &url).unwrap_err();
    assert!(matches!(err, PullError::NoDigest { .. }), "{err}");
    let mut options = options(&hub);
    options.sha256 = Some(file.sha256.to_uppercase());
    let pulled = home.pull_with(&url, &options).unwrap();
    assert_eq!(pulled.record.id.as_str(), "SmolLM2");
    // The store had that file under another name: linked, not downloaded again.
    assert!(!pulled.downloaded);
    assert_eq!(hub.downloads().len(), 1, "{:?}", hub.downloads());
    use std::os::unix::fs::MetadataExt;
    let inode = |id: &str| {
        let entry = home.store.resolve(&ModelId::new(id).unwrap()).unwrap();
        std::fs::metadata(entry.path).unwrap().ino()
    };
    assert_eq!(inode("SmolLM2"), inode("smollm2:135m"), "one copy on disk");
    assert_eq!(home.store.list().unwrap().len(), 2);
}

#[test]
fn unknown_repositories_files_and_quantizations_are_clear_errors() {
    let hub = FakeHub::start();
    hub.add_repo_file(REPO, FILE, smollm2());
    let home = Home::new();
    let err = home.pull(&hub, "hf.co/test/nothing-here").unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
    let err = home.pull(&hub, &format!("hf.co/{REPO}:Q2_K")).unwrap_err();
    assert!(
        err.to_string().contains("Q2_K") && err.to_string().contains(FILE),
        "{err}"
    );
    let err = home.pull(&hub, "ollama.com/nothing:1b").unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
    let err = home.pull(&hub, &format!("{}/files/missing.gguf", hub.url)).unwrap_err();
    assert!(
        matches!(err, PullError::NoDigest { .. } | PullError::NotFound { .. }),
        "{err}"
    );
    assert!(home.registry.records().unwrap().is_empty());
}

#[test]
fn offline_mode_refuses_before_any_request() {
    let hub = FakeHub::start();
    hub.add_repo_file(REPO, FILE, smollm2());
    let home = Home::new();
    let mut options = options(&hub);
    options.offline = true;
    let err = home.pull_with(&format!("hf.co/{REPO}"), &options).unwrap_err();
    assert!(matches!(err, PullError::Offline(_)), "{err}");
    assert!(err.to_string().contains("offline"));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[test]
fn two_concurrent_pulls_of_one_model_download_it_once() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_repo_file(REPO, FILE, file.clone());
    let home = Home::new();
    let source = format!("hf.co/{REPO}:Q8_0");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| home.pull(&hub, &source))).collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|p| p.downloaded).count(), 1);
    assert!(results.iter().all(|p| p.record.sha256 == file.sha256));
    let file_gets = hub.downloads().iter().filter(|(p, _)| p.ends_with(".gguf")).count();
    assert_eq!(file_gets, 1);
}

/// A test CA and a server certificate for `localhost` signed by it: the CA's PEM and the
/// server's TLS configuration.
fn test_ca() -> (String, tokio_rustls::rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca_cert.pem(), tls)
}

#[test]
fn https_pulls_trust_a_ca_file_and_refuse_a_server_nobody_vouches_for() {
    let (ca_pem, tls) = test_ca();
    let hub = FakeHub::start_tls(tls);
    let file = smollm2();
    hub.add_repo_file(REPO, FILE, file.clone());
    let home = Home::new();
    let source = format!("hf.co/{REPO}:Q8_0");

    // Without the CA the certificate is unknown: a clear error, nothing downloaded.
    let err = home.pull(&hub, &source).unwrap_err();
    assert!(matches!(err, PullError::Network { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert!(home.store.list().unwrap().is_empty());

    let ca_file = home._dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut options = options(&hub);
    options.ca_file = Some(ca_file);
    let pulled = home.pull_with(&source, &options).unwrap();
    assert_eq!(pulled.record.sha256, file.sha256);

    // A CA file that holds no certificate is refused before any connection.
    let bad = home._dir.path().join("empty.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    options.ca_file = Some(bad);
    let err = home.pull_with("hf.co/test/other", &options).unwrap_err();
    assert!(matches!(err, PullError::Tls(_)), "{err}");
}
