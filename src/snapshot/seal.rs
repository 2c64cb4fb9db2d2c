//! Sealing: AES-256-GCM over the JSON, the magic as associated data, a random nonce.

pub(super) use aws_lc_rs::aead::NONCE_LEN;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use secrecy::zeroize::Zeroizing;

use super::format::{json_len, Body};
use super::{snapshot_error, Snapshot, MAX_SNAPSHOT_BYTES};
use crate::error::Error;
use crate::files::{write_atomically, WriteOptions};

pub(super) const MAGIC: &[u8; 8] = b"KVFSNAP1";
pub(super) const TAG_LEN: usize = 16;

impl Snapshot {
    pub(super) fn sealing_key(&self) -> Result<LessSafeKey, Error> {
        UnboundKey::new(&AES_256_GCM, self.key.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| snapshot_error("the snapshot key was refused by AES-256-GCM".into()))
    }

    /// Seals `body` and writes it atomically.
    pub(super) fn write_body(&self, body: Body) -> Result<(), Error> {
        // A save still running on a blocking thread (its task was aborted at shutdown) and the
        // last save must not interleave in the temporary file.
        let _one = crate::lock(&self.saving);
        let n = body.entries.len();
        // Sized up front so the buffer holding values is not reallocated (leaving copies).
        let estimate = body
            .entries
            .iter()
            .map(|r| {
                json_len(r.key) + json_len(r.value) + json_len(r.version) + json_len(r.region) + 160
            })
            .sum::<usize>()
            + 64;
        let mut buf = Zeroizing::new(Vec::with_capacity(estimate + TAG_LEN));
        serde_json::to_writer(&mut *buf, &body)
            .map_err(|e| snapshot_error(format!("cannot encode the snapshot: {e}")))?;
        drop(body);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| snapshot_error("no random nonce for the snapshot".into()))?;
        self.sealing_key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(MAGIC),
                &mut *buf,
            )
            .map_err(|_| snapshot_error("cannot seal the snapshot".into()))?;
        let mut file = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&buf);
        if file.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(snapshot_error(format!(
                "the snapshot of {n} values would be {} bytes, over the {MAX_SNAPSHOT_BYTES} \
                 bytes a snapshot may hold",
                file.len()
            )));
        }
        write_atomically(&self.path, &file, &WriteOptions::default()).map_err(|e| {
            snapshot_error(format!(
                "cannot write snapshot {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(())
    }

    /// Checks the magic and opens the sealed file `bytes` (shown as `shown` in errors); the
    /// plaintext stays in the zeroized buffer it was opened in.
    pub(super) fn open(
        &self,
        bytes: Zeroizing<Vec<u8>>,
        shown: &str,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        if bytes.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
            return Err(snapshot_error(format!(
                "snapshot {shown} is truncated ({} bytes)",
                bytes.len()
            )));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(snapshot_error(format!(
                "{shown} is not a keyvault-failover snapshot of format 1"
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + NONCE_LEN]);
        let mut sealed = Zeroizing::new(bytes[MAGIC.len() + NONCE_LEN..].to_vec());
        drop(bytes);
        let len = self
            .sealing_key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(MAGIC),
                &mut sealed,
            )
            .map_err(|_| {
                snapshot_error(format!(
                    "snapshot {shown} cannot be opened: it was tampered with, truncated, or \
                     sealed with another key"
                ))
            })?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }
}
