//! Configuration: the ordered regions and every tunable, with documented defaults.
//!
//! Build it in code with [`Config::builder`] or read it from TOML with [`Config::from_toml`].
//! Both end in the same validation, which returns a clear [`Error`] (`is_config()`) rather
//! than letting a bad setting surface later as an outage.
//!
//! ```
//! use keyvault_failover::Config;
//! let config = Config::from_toml(r#"
//!     [[regions]]
//!     name = "weu"
//!     url = "https://app-weu.vault.azure.net"
//!     access = "read-write"
//!
//!     [[regions]]
//!     name = "neu"
//!     url = "https://app-neu.vault.azure.net"
//!     access = "read-only"
//!
//!     [timeouts]
//!     attempt = "1500ms"
//!
//!     [cache]
//!     refresh_interval = "5m"
//!     staleness_cap = "12h"
//!     staleness_overrides = { db-password = "1h" }
//! "#).unwrap();
//! assert_eq!(config.regions().len(), 2);
//! assert!(Config::from_toml("regions = []").unwrap_err().is_config());
//! ```

mod builder;
mod file;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use builder::ConfigBuilder;
pub(crate) use settings::*;

/// Whether a region's vault takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The writable primary.
    ReadWrite,
    /// A replica: reads only. Writes are never sent to it.
    ReadOnly,
}

/// One regional vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    name: String,
    url: String,
    access: Access,
    /// Connect to this `ip:port` instead of resolving the URL's host (private endpoints,
    /// proxies, the emulator); TLS still checks the URL's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<std::net::SocketAddr>,
    /// This region's credential, when it differs from the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential: Option<CredentialKind>,
}

impl Region {
    /// The region's short name (`weu`, `neu`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The vault URL (`https://<vault>.vault.azure.net`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Read-write or read-only.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The address connected to instead of resolving the URL's host, if set.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.address
    }
    /// This region's own credential, if set (else [`Config::credential`]).
    pub fn credential(&self) -> Option<CredentialKind> {
        self.credential
    }
}

/// Which `azure_identity` credential [`azure::connect_with_config`](crate::azure::connect_with_config)
/// uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Azure CLI / Azure Developer CLI sign-in (developer machines). The default.
    #[default]
    DeveloperTools,
    /// The managed identity of the App Service, VM or container the service runs in.
    ManagedIdentity,
    /// No credential: a fixed placeholder token. Only for the project's emulator (which checks
    /// that a token is sent, not what it is); Key Vault answers 401 to it.
    None,
}

/// A validated client configuration. Build with [`Config::builder`] or [`Config::from_toml`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    regions: Vec<Region>,
    #[serde(default)]
    allow_multiple_writable: bool,
    #[serde(default)]
    credential: CredentialKind,
    /// PEM file of the CA certificates to trust instead of the system's roots (a private CA,
    /// a TLS-inspecting proxy, the emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_bundle: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(crate) timeouts: Timeouts,
    #[serde(default)]
    pub(crate) breaker: BreakerConfig,
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    #[serde(default)]
    pub(crate) cache: CacheConfig,
    #[serde(default)]
    pub(crate) throttle: ThrottleConfig,
    #[serde(default)]
    pub(crate) probe: ProbeConfig,
    #[serde(default)]
    pub(crate) hedge: HedgeConfig,
    #[serde(default)]
    pub(crate) refresh: RefreshConfig,
}

impl Config {
    /// Reads and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::config(format!("invalid configuration: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration from a TOML table already parsed (a file's, with the tables that are
    /// not the client's taken out): checked as [`Config::from_toml`], parsed once.
    ///
    /// # Errors
    /// [`Error::is_config`] saying what is wrong.
    pub fn from_table(table: toml::Table) -> Result<Config, Error> {
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::config(format!("invalid configuration: {}", e.message()))
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML (round-trips through [`Config::from_toml`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The credential to authenticate with in real use.
    pub fn credential(&self) -> CredentialKind {
        self.credential
    }

    /// The time one read may take in all (`timeouts.deadline`).
    pub fn deadline(&self) -> Duration {
        self.timeouts.deadline
    }

    /// How long a last-known-good value may be served stale (`cache.staleness_cap`; a secret
    /// of its own in `cache.staleness_caps` may have another).
    pub fn default_staleness_cap(&self) -> Duration {
        self.cache.staleness_cap
    }

    /// The timeout of one whole listing, every page (`timeouts.list`).
    pub fn list_timeout(&self) -> Duration {
        self.timeouts.list
    }

    /// The timeout of one vault call (`timeouts.attempt`).
    pub fn attempt_timeout(&self) -> Duration {
        self.timeouts.attempt
    }

    pub(crate) fn throttle(&self) -> &ThrottleConfig {
        &self.throttle
    }

    /// The regions in priority order (primary first).
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The CA bundle trusted instead of the system's roots, if set. A relative path is taken
    /// from the directory the process runs in; [`Config::from_file`] makes it relative to the
    /// file.
    pub fn ca_bundle(&self) -> Option<&std::path::Path> {
        self.ca_bundle.as_deref()
    }

    /// The staleness cap for `name` (its override, or the client-wide cap).
    pub(crate) fn staleness_cap(&self, key: &str) -> Duration {
        self.cache
            .staleness_overrides
            .get(key)
            .copied()
            .unwrap_or(self.cache.staleness_cap)
    }
}
