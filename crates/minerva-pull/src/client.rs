//! The HTTP client of every pull: rustls on aws-lc-rs, the Mozilla roots of
//! `webpki-roots`, plus the certificates of an optional CA file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::Client;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::PullError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A read that brings no byte for this long counts as a dropped connection.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes aws-lc-rs the process's TLS provider. reqwest is built without a provider of its
/// own (its default is `ring`, which our dependency policy refuses), so every program that
/// builds a plain `reqwest::Client` in a process linking this crate calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// rustls on aws-lc-rs with the Mozilla roots and the certificates of `ca_file`.
fn tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, PullError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| PullError::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(PullError::Tls(format!(
                "{}: no PEM certificate in the file",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| PullError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PullError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The async client of the server's remote backends: the same TLS as pulls, a connect
/// timeout, no overall timeout (a stream lasts as long as its generation).
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, PullError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls(ca_file)?)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("minerva/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PullError::Tls(e.to_string()))
}

pub fn build(ca_file: Option<&Path>) -> Result<Client, PullError> {
    Client::builder()
        .use_preconfigured_tls(tls(ca_file)?)
        .connect_timeout(CONNECT_TIMEOUT)
        // The blocking client applies this to each read of the body, not to the whole
        // download: a stalled connection fails (and resumes), a long download does not.
        .timeout(READ_TIMEOUT)
        .user_agent(concat!("minerva/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PullError::Tls(e.to_string()))
}
