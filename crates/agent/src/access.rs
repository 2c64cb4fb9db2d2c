//! Who may do what on the Key Vault API: the agent's own token may do everything; a caller
//! verified by its Entra ID token (`[[agent.vault_api.entra.caller]]`) may read the secrets
//! its globs name, and write them only if its entry says so. One agent can so serve several
//! services without each reading the others' secrets.

use std::sync::Arc;

use crate::error::{Error, Kind};

/// The most globs one caller's entry holds, and the longest glob.
const MAX_GLOBS: usize = 1_000;
const MAX_GLOB_LEN: usize = 256;

/// One allowed caller: an Entra ID object id or application id, the secret names (globs,
/// matched without regard to case, as Key Vault's names are) it may read, and whether it may
/// write them.
#[derive(Debug)]
pub(crate) struct Caller {
    id: String,
    label: String,
    secrets: Vec<glob::Pattern>,
    write: bool,
}

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl Caller {
    /// A caller's entry, checked: an id of at most 128 letters, digits, `-`, `.`, `@` or `_`,
    /// and at least one glob, each a valid one.
    pub(crate) fn new(
        id: &str,
        label: Option<&str>,
        secrets: &[String],
        write: bool,
    ) -> Result<Caller, Error> {
        let bad = |m: String| Error::new(Kind::Config, format!("[agent.vault_api.entra] {m}"));
        let id_ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'@' | b'_'));
        if !id_ok {
            return Err(bad(format!(
                "caller id {:?}: an object id or application id (at most 128 letters, digits, '-', '.', '@', '_')",
                id.chars().take(140).collect::<String>()
            )));
        }
        if secrets.is_empty() || secrets.len() > MAX_GLOBS {
            return Err(bad(format!(
                "caller {id}: secrets names 1 to {MAX_GLOBS} globs (\"*\" for every secret)"
            )));
        }
        let secrets = secrets
            .iter()
            .map(|g| {
                if g.is_empty() || g.len() > MAX_GLOB_LEN {
                    return Err(bad(format!(
                        "caller {id}: a glob of 1 to {MAX_GLOB_LEN} characters"
                    )));
                }
                glob::Pattern::new(g).map_err(|e| bad(format!("caller {id}: glob {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Caller {
            id: id.to_ascii_lowercase(),
            label: label.unwrap_or(id).to_string(),
            secrets,
            write,
        })
    }

    /// Whether this entry is the caller with any of `ids` (object id, app id, `azp`).
    pub(crate) fn is(&self, ids: &[Option<&str>]) -> bool {
        ids.iter()
            .flatten()
            .any(|i| i.eq_ignore_ascii_case(&self.id))
    }

    fn names(&self, name: &str) -> bool {
        self.secrets.iter().any(|p| p.matches_with(name, MATCH))
    }
}

/// What a request may do: everything (the agent's token), or what one caller's entry allows.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// The bearer was the agent's own token.
    Agent,
    /// A caller verified by its Entra ID token.
    Caller(Arc<Caller>),
}

impl Access {
    /// Whether the secret `name` may be read (and listed).
    pub(crate) fn may_read(&self, name: &str) -> bool {
        match self {
            Access::Agent => true,
            Access::Caller(c) => c.names(name),
        }
    }

    /// Whether the secret `name` may be written.
    pub(crate) fn may_write(&self, name: &str) -> bool {
        match self {
            Access::Agent => true,
            Access::Caller(c) => c.write && c.names(name),
        }
    }

    /// Who it is, for logs and Key Vault's Forbidden message (an id, never a token).
    pub(crate) fn who(&self) -> &str {
        match self {
            Access::Agent => "the agent's token",
            Access::Caller(c) => &c.label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(globs: &[&str], write: bool) -> Access {
        let g: Vec<String> = globs.iter().map(|s| s.to_string()).collect();
        Access::Caller(Arc::new(Caller::new("app-1", None, &g, write).unwrap()))
    }

    #[test]
    fn globs_say_what_a_caller_may_read_and_write() {
        let reader = caller(&["db-*", "api-key"], false);
        for (name, ok) in [
            ("db-password", true),
            ("DB-Password", true),
            ("api-key", true),
            ("api-key-2", false),
            ("tls-key", false),
            ("", false),
        ] {
            assert_eq!(reader.may_read(name), ok, "{name}");
            assert!(!reader.may_write(name), "{name}");
        }
        let writer = caller(&["svc-?"], true);
        assert!(writer.may_write("svc-a") && !writer.may_write("svc-ab"));
        assert!(Access::Agent.may_read("anything") && Access::Agent.may_write("anything"));
    }

    #[test]
    fn entries_are_checked() {
        let g = vec!["*".to_string()];
        for id in ["", "a b", "x\"y", &"a".repeat(129)] {
            assert!(
                Caller::new(id, None, &g, false).unwrap_err().is_config(),
                "{id:?}"
            );
        }
        assert!(Caller::new("ok", None, &[], false).is_err());
        assert!(Caller::new("ok", None, &["[".to_string()], false).is_err());
        assert!(Caller::new("ok", None, &["a".repeat(300)], false).is_err());
        let c = Caller::new(
            "00000000-AAAA-0000-0000-000000000001",
            Some("billing"),
            &g,
            false,
        )
        .unwrap();
        assert!(c.is(&[None, Some("00000000-aaaa-0000-0000-000000000001")]));
        assert!(!c.is(&[None, Some("other")]));
        assert_eq!(Access::Caller(Arc::new(c)).who(), "billing");
    }
}
