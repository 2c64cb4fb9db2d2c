//! The provenance MAC: what proves a copy is the replicator's.
//!
//! Tags are readable by whoever may list and writable by whoever may write a secret, so a
//! provenance tag alone proves nothing: a value planted under a genuine copy's tags looked in
//! step for ever. With a key (`ReplicatorBuilder::mac_key`, `replicate --mac-key-file`), every
//! copy's tag carries a keyed MAC (HMAC-SHA256, truncated to 128 bits, hex) over the secret's
//! name, the provenance and the **value**, under a key only the replicator holds. Never a bare
//! hash of the value: anyone who may list could test guesses against it. A listing cannot check
//! the MAC (it has no value), so what checks it is a read of the copy: before the replicator
//! prunes a copy (pruning needs the key), and on a deep pass (`replicate --deep`), which rewrites a copy
//! whose MAC does not match its value.
//!
//! ```
//! use keyvault_failover::replicate::{MacKey, Provenance};
//! let key = MacKey::new(vec![7u8; 32]).unwrap();
//! let prov = Provenance::new("weu", "v1", 100).with_read(103);
//! let sealed = key.seal("db-password", &prov, "s3cret");
//! assert!(key.verifies("db-password", &sealed, "s3cret"));
//! assert!(!key.verifies("db-password", &sealed, "planted"), "another value");
//! assert!(!key.verifies("api-key", &sealed, "s3cret"), "another name");
//! assert!(!key.verifies("db-password", &prov, "s3cret"), "no MAC");
//! ```

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::zeroize::Zeroizing;
use sha2::Sha256;

use super::item::{Provenance, MAC_HEX_LEN};
use crate::error::Error;

/// The shortest key accepted, in bytes.
pub const MIN_MAC_KEY_LEN: usize = 32;
/// The longest key file read, in bytes.
const MAX_KEY_FILE: u64 = 4096;

/// The replicator's provenance key. Its `Debug` shows nothing of it; it is zeroized on drop.
#[derive(Clone)]
pub struct MacKey(Arc<Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// A key of at least [`MIN_MAC_KEY_LEN`] bytes.
    ///
    /// # Errors
    /// [`Error::is_config`] for a shorter key.
    pub fn new(bytes: Vec<u8>) -> Result<MacKey, Error> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_MAC_KEY_LEN {
            return Err(Error::config(format!(
                "the provenance MAC key has {} bytes; at least {MIN_MAC_KEY_LEN} are needed \
                 (e.g. `head -c 32 /dev/urandom > replicator.key`)",
                bytes.len()
            )));
        }
        Ok(MacKey(Arc::new(bytes)))
    }

    /// The key in `path`: its bytes as they are (at most 4 KiB), from a file private to its
    /// owner (no group or other permissions).
    ///
    /// # Errors
    /// [`Error::is_config`] when the file cannot be read, is shared, or is too short.
    pub fn from_file(path: &Path) -> Result<MacKey, Error> {
        let bad = |m: String| Error::config(format!("mac key {}: {m}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(bad(
                    "readable by others: it must be private to its owner (chmod 600)".into(),
                ));
            }
        }
        let bytes =
            crate::files::read_bounded(path, MAX_KEY_FILE).map_err(|e| bad(e.to_string()))?;
        MacKey::new(bytes.to_vec()).map_err(|e| bad(e.to_string()))
    }

    fn mac(&self, name: &str, prov: &Provenance, value: &str) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let read = prov.read().map(|r| r.to_string()).unwrap_or_default();
        for part in [
            "kvf-source/1",
            &name.to_ascii_lowercase(),
            &prov.created().to_string(),
            &read,
            prov.version(),
            prov.region(),
        ] {
            m.update(part.as_bytes());
            m.update(&[0]);
        }
        m.update(value.as_bytes());
        m
    }

    /// `prov` with the MAC of `name`'s copy holding `value` (any MAC it had is replaced).
    pub fn seal(&self, name: &str, prov: &Provenance, value: &str) -> Provenance {
        let tag = self.mac(name, prov, value).finalize().into_bytes();
        let hex: String = tag[..MAC_HEX_LEN / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        prov.clone().with_mac(hex)
    }

    /// Whether `prov` carries the MAC of `name`'s copy holding `value` (compared in constant
    /// time).
    pub fn verifies(&self, name: &str, prov: &Provenance, value: &str) -> bool {
        let Some(hex) = prov.mac() else {
            return false;
        };
        let Some(bytes) = unhex(hex) else {
            return false;
        };
        self.mac(name, prov, value)
            .verify_truncated_left(&bytes)
            .is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != MAC_HEX_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_binds_every_part_and_survives_the_tag() {
        let key = MacKey::new(vec![1u8; 32]).unwrap();
        let prov = Provenance::new("west:europe", "v1", 100).with_read(102);
        let sealed = key.seal("Db", &prov, "value");
        let parsed = Provenance::parse(&sealed.encode()).unwrap();
        assert_eq!(parsed, sealed);
        assert!(key.verifies("db", &parsed, "value"), "names are case-blind");
        for other in [
            Provenance::new("west:europe", "v2", 100).with_read(102),
            Provenance::new("west:europe", "v1", 101).with_read(102),
            Provenance::new("west:europe", "v1", 100).with_read(103),
            Provenance::new("neu", "v1", 100).with_read(102),
        ] {
            let moved = other.with_mac(sealed.mac().unwrap().to_string());
            assert!(!key.verifies("db", &moved, "value"), "{moved:?}");
        }
        let other_key = MacKey::new(vec![2u8; 32]).unwrap();
        assert!(!other_key.verifies("db", &sealed, "value"));
        assert!(MacKey::new(vec![0u8; 31]).unwrap_err().is_config());
        assert_eq!(format!("{key:?}"), "MacKey(..)");
    }
}
