//! The Key Vault API's certificate: the operator's chain and key, or a local CA kept in a
//! private directory (created 0700; its key 0600) and a leaf for `localhost`, `127.0.0.1` and
//! `::1` signed by it. The CA is made once and reused across restarts, so a client told to
//! trust `ca.pem` keeps trusting the agent; the leaf is made at every start, valid for 30
//! days, and renewed by a running agent ten days before it expires ([`Renewer`]): the
//! listener's resolver hands new handshakes the new leaf, connections already made keep
//! theirs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;

use crate::config::TlsSource;
use crate::error::{Error, Kind};

/// The largest certificate or key file read.
const MAX_PEM: u64 = 256 * 1024;
const CA_NAME: &str = "keyvault-failover agent local CA";

/// How long a generated leaf is valid, and how long before its end it is renewed.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);

/// The listener's TLS, where the CA clients should trust is, and (for a generated one) what
/// renews its leaf.
pub(crate) struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) ca_path: Option<PathBuf>,
    pub(crate) renewer: Option<Renewer>,
}

/// The certificate every new handshake gets: swapped whole when the leaf is renewed.
#[derive(Debug)]
struct Resolver(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Renews the generated leaf: signs a new one with the kept CA when the current one is
/// within [`RENEW_BEFORE`] of its end.
pub(crate) struct Renewer {
    ca_key: rcgen::KeyPair,
    resolver: Arc<Resolver>,
    not_after: SystemTime,
}

impl Renewer {
    /// Whether the leaf is due for renewal at `now`.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        now.checked_add(RENEW_BEFORE)
            .is_none_or(|t| t >= self.not_after)
    }

    /// Renews the leaf if it is due at `now`; whether it did.
    pub(crate) fn renew_if_due(&mut self, now: SystemTime) -> Result<bool, Error> {
        if !self.due(now) {
            return Ok(false);
        }
        let (key, not_after) = leaf(&self.ca_key, now)?;
        self.resolver.0.store(Arc::new(key));
        self.not_after = not_after;
        Ok(true)
    }
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
                renewer: None,
            })
        }
        TlsSource::Generated { dir } => generated(dir),
    }
}

fn read(path: &Path) -> Result<secrecy::zeroize::Zeroizing<Vec<u8>>, Error> {
    keyvault_failover::files::read_bounded(path, MAX_PEM)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))
}

fn config_builder(
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)
}

fn finish(mut config: rustls::ServerConfig) -> TlsAcceptor {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn acceptor(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, Error> {
    let config = config_builder()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error)?;
    Ok(finish(config))
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
    use rcgen::KeyPair;
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
    let (key, not_after) = leaf(&ca_key, SystemTime::now())?;
    let resolver = Arc::new(Resolver(arc_swap::ArcSwap::from_pointee(key)));
    let config = config_builder()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    // The leaf alone: clients trust the CA kept in `ca.pem` (the same key and name at every
    // start, so a leaf made later verifies against it).
    Ok(ServerTls {
        acceptor: finish(config),
        ca_path: Some(ca_path),
        renewer: Some(Renewer {
            ca_key,
            resolver,
            not_after,
        }),
    })
}

/// A leaf for `localhost`, `127.0.0.1` and `::1`, signed by the CA's key, valid from an hour
/// before `now` (clocks differ a little) for [`LEAF_VALIDITY`]; and its end.
fn leaf(
    ca_key: &rcgen::KeyPair,
    now: SystemTime,
) -> Result<(rustls::sign::CertifiedKey, SystemTime), Error> {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut leaf_params = CertificateParams::new(names).map_err(tls_error)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "keyvault-failover agent");
    let not_after = now + LEAF_VALIDITY;
    leaf_params.not_before = time::OffsetDateTime::from(now - Duration::from_secs(3600));
    leaf_params.not_after = time::OffsetDateTime::from(not_after);
    let leaf_key = KeyPair::generate().map_err(tls_error)?;
    // The issuer borrows the CA's key: the same key signs every leaf.
    let ca = ca_params()?;
    let issuer = Issuer::from_params(&ca, ca_key);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(tls_error)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(vec![leaf.der().clone()], key, &provider)
        .map_err(tls_error)?;
    Ok((certified, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_leaf_is_renewed_ten_days_before_it_expires() {
        let dir = std::env::temp_dir().join(format!("kvf-tls-renew-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tls = generated(&dir).unwrap();
        let mut r = tls.renewer.expect("a generated leaf has a renewer");
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        assert!(!r.due(now) && !r.due(now + 19 * day));
        assert!(r.due(now + 21 * day));
        let before = r.resolver.0.load_full().cert[0].clone();
        assert!(!r.renew_if_due(now + 5 * day).unwrap(), "not due: kept");
        assert_eq!(r.resolver.0.load_full().cert[0], before);
        assert!(r.renew_if_due(now + 21 * day).unwrap());
        assert_ne!(
            r.resolver.0.load_full().cert[0],
            before,
            "new handshakes get the new leaf"
        );
        assert!(!r.due(now + 21 * day) && r.due(now + 41 * day));
        std::fs::remove_dir_all(&dir).ok();
    }
}
