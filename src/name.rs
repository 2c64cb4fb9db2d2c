//! Secret names, validated as Key Vault validates them before anything is sent.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Kind};

/// Longest name Key Vault accepts.
pub const MAX_NAME_LEN: usize = 127;

/// A valid Key Vault secret name: 1–127 ASCII letters, digits and dashes.
///
/// Key Vault names are case-insensitive, so two names that differ only in case are the same
/// secret: they compare equal, hash alike and share one cache entry. The spelling the caller
/// gave is kept for requests.
///
/// ```
/// use keyvault_failover::SecretName;
/// assert!(SecretName::new("db-password").is_ok());
/// assert_eq!(SecretName::new("DB-Password").unwrap(), SecretName::new("db-password").unwrap());
/// assert!(SecretName::new("db_password").unwrap_err().is_invalid_name());
/// assert!(SecretName::new("").unwrap_err().is_invalid_name());
/// ```
#[derive(Clone)]
pub struct SecretName {
    given: Arc<str>,
    key: Arc<str>,
}

impl SecretName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, Error> {
        validate(name)?;
        let key: Arc<str> = name.to_ascii_lowercase().into();
        let given = if *key == *name {
            key.clone()
        } else {
            name.into()
        };
        Ok(SecretName { given, key })
    }

    /// The name as the caller spelled it.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The case-folded name used as the cache key.
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }
}

/// Whether `s` is non-empty and only ASCII letters, digits and dashes: Key Vault's alphabet of
/// names, version ids and vault names (each caller adds its own length bound).
pub(crate) fn is_kv_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn validate(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::new(Kind::InvalidName, "secret name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            Kind::InvalidName,
            format!(
                "secret name is {} characters long; Key Vault allows at most {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(Error::new(
            Kind::InvalidName,
            format!(
                "secret name contains {:?}; Key Vault allows only letters, digits and dashes",
                c
            ),
        ));
    }
    Ok(())
}

impl PartialEq for SecretName {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for SecretName {}

impl std::hash::Hash for SecretName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.given, f)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

impl TryFrom<&str> for SecretName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        SecretName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits() {
        assert!(SecretName::new(&"a".repeat(127)).is_ok());
        assert!(SecretName::new(&"a".repeat(128)).is_err());
        for bad in ["a b", "a/b", "a.b", "ä", "a\n", "../x", "a%2f"] {
            assert!(SecretName::new(bad).unwrap_err().is_invalid_name(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_exactly_the_kv_alphabet(s in ".{0,140}") {
            let ok = !s.is_empty() && s.len() <= 127
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            prop_assert_eq!(SecretName::new(&s).is_ok(), ok);
        }
    }
}
