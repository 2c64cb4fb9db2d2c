//! The Key Vault API's certificate: the operator's chain and key, or a local CA kept in a
//! private directory (created 0700; its key 0600) and a leaf for `localhost`, `127.0.0.1` and
//! `::1` signed by it at each start. The CA is made once and reused across restarts, so a
//! client told to trust `ca.pem` keeps trusting the agent; the leaf is new at every start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsSource;
use crate::error::{Error, Kind};

/// The largest certificate or key file read.
const MAX_PEM: u64 = 256 * 1024;
const CA_NAME: &str = "keyvault-failover agent local CA";

/// The listener's TLS, and where the CA clients should trust is (for a generated one).
pub(crate) struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) ca_path: Option<PathBuf>,
}

fn tls_error(m: impl std::fmt::Display) -> Error {
    Error::new(Kind::Config, format!("[agent.vault_api] TLS: {m}"))
}

/// The TLS of `[agent.vault_api]`, from `source`.
pub(crate) fn server_tls(source: &TlsSource) -> Result<ServerTls, Error> {
    match source {
        TlsSource::Files { cert, key } => {
            let chain = read(cert)?;
            let key_pem = read(key)?;
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
                rustls::pki_types::CertificateDer::pem_slice_iter(&chain)
                    .collect::<Result<_, _>>()
                    .map_err(|e| tls_error(format!("{}: {e}", cert.display())))?;
            if certs.is_empty() {
                return Err(tls_error(format!("{}: no certificate", cert.display())));
            }
            let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| tls_error(format!("{}: {e}", key.display())))?;
            Ok(ServerTls {
                acceptor: acceptor(certs, key_der)?,
                ca_path: None,
            })
        }
        TlsSource::Generated { dir } => generated(dir),
    }
}

fn read(path: &Path) -> Result<secrecy::zeroize::Zeroizing<Vec<u8>>, Error> {
    keyvault_failover::files::read_bounded(path, MAX_PEM)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))
}

fn acceptor(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn ca_params() -> Result<rcgen::CertificateParams, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    Ok(p)
}

/// A private directory of ours: created 0700, or an existing one no one else may enter.
fn private_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(tls_error(format!("{} is not a directory", dir.display())))
            }
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                return Err(tls_error(format!(
                    "{} may be entered by others: it holds the CA's key (chmod 700)",
                    dir.display()
                )))
            }
            Ok(_) => {}
            Err(_) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| tls_error(format!("{}: {e}", dir.display())))?,
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| tls_error(format!("{}: {e}", dir.display())))?;
    Ok(())
}

/// Writes `bytes` to a new file `path` with `mode` (never over an existing one).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o
        .open(path)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))
}

fn generated(dir: &Path) -> Result<ServerTls, Error> {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    private_dir(dir)?;
    let key_path = dir.join("ca.key");
    let ca_path = dir.join("ca.pem");
    let ca_key = if key_path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::symlink_metadata(&key_path)
                .map_err(|e| tls_error(format!("{}: {e}", key_path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(tls_error(format!(
                    "{} is readable by others: the CA's key must be private (chmod 600)",
                    key_path.display()
                )));
            }
        }
        let pem = read(&key_path)?;
        let text = std::str::from_utf8(&pem).map_err(tls_error)?;
        KeyPair::from_pem(text).map_err(|e| tls_error(format!("{}: {e}", key_path.display())))?
    } else {
        let k = KeyPair::generate().map_err(tls_error)?;
        write_new(&key_path, k.serialize_pem().as_bytes(), 0o600)?;
        k
    };
    if !ca_path.exists() {
        let ca = ca_params()?.self_signed(&ca_key).map_err(tls_error)?;
        write_new(&ca_path, ca.pem().as_bytes(), 0o644)?;
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut leaf_params = CertificateParams::new(names).map_err(tls_error)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "keyvault-failover agent");
    let leaf_key = KeyPair::generate().map_err(tls_error)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(tls_error)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    // The leaf alone: clients trust the CA kept in `ca.pem` (the same key and name at every
    // start, so a leaf made later verifies against it).
    Ok(ServerTls {
        acceptor: acceptor(vec![leaf.der().clone()], key)?,
        ca_path: Some(ca_path),
    })
}
