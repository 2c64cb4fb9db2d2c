//! The vault abstraction: one [`SecretStore`] per regional vault.
//!
//! The client never talks HTTP itself; it calls a store and reads the classification of the
//! [`StoreError`] it gets back. [`MemoryStore`] is the in-process store that the tests and the
//! simulator use, with scriptable faults.

mod memory;

pub use memory::{Fault, Latency, MemoryStore};

use async_trait::async_trait;
use secrecy::SecretString;

use crate::error::StoreError;
use crate::name::SecretName;
use crate::secret::{Metadata, PropertiesUpdate, SecretProperties, StoredSecret};

/// One regional vault.
///
/// Implementations do one attempt per call: no retries, no caching (the client does both).
/// Timeouts are applied by the client around each call; a store may have its own as well.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Reads the latest version of `name`, or `version` when given.
    async fn get(
        &self,
        name: &SecretName,
        version: Option<&str>,
    ) -> Result<StoredSecret, StoreError>;

    /// Writes a new version of `name` and returns its version id.
    async fn set(&self, name: &SecretName, value: &SecretString) -> Result<String, StoreError>;

    /// Deletes `name` (all versions).
    async fn delete(&self, name: &SecretName) -> Result<(), StoreError>;

    /// Lists the properties of every secret (no values).
    async fn list(&self) -> Result<Vec<SecretProperties>, StoreError>;

    /// Lists the versions of `name` (no values), each with its version id. The default says
    /// the store does not (a refusal, `Rejected` 501: no other vault is asked).
    async fn versions(&self, name: &SecretName) -> Result<Vec<SecretProperties>, StoreError> {
        let _ = name;
        Err(StoreError::new(
            crate::error::StoreErrorKind::Rejected { status: 501 },
            "this store does not list a secret's versions",
        ))
    }

    /// Changes the editable properties of `name`'s `version` (the latest when `None`), as Key
    /// Vault's `PATCH`: what the update leaves `None` stays. Returns the version changed and
    /// its metadata after the change. The default says the store does not (a refusal,
    /// `Rejected` 501).
    async fn update_properties(
        &self,
        name: &SecretName,
        version: Option<&str>,
        update: &PropertiesUpdate,
    ) -> Result<(String, Metadata), StoreError> {
        let _ = (name, version, update);
        Err(StoreError::new(
            crate::error::StoreErrorKind::Rejected { status: 501 },
            "this store does not update properties",
        ))
    }

    /// The health probe used when no canary secret is configured: one cheap request that
    /// proves the vault answers. The default lists; a store whose listing takes many requests
    /// should ask for one page of one item.
    async fn probe(&self) -> Result<(), StoreError> {
        self.list().await.map(|_| ())
    }

    /// The health probe once the client has read a secret (or a canary is configured): a GET
    /// of `name`, because what must be healthy is what callers do (a vault can answer its
    /// listing while its GETs fail). A 404 counts as an answer. The default is [`get`](Self::get)
    /// (Self::get) with the value dropped at once.
    async fn probe_read(&self, name: &SecretName) -> Result<(), StoreError> {
        self.get(name, None).await.map(|_| ())
    }
}
