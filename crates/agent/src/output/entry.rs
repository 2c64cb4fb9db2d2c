//! `[[agent.file]]` as written, and its checks: where it may go, what it holds, its mode,
//! owner and group, its command.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyvault_failover::files::WriteOptions;
use serde::Deserialize;

use super::{Command, FileSpec, Source};
use crate::error::{Error, Kind};

/// The largest template file read.
const MAX_TEMPLATE: u64 = 1024 * 1024;

/// One `[[agent.file]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Where the file goes: inside one of `[agent] file_dirs`.
    path: PathBuf,
    /// One secret's value, as it is ...
    #[serde(default)]
    secret: Option<String>,
    /// ... or a template (minijinja: `{{ secret("name") }}`) ...
    #[serde(default)]
    template: Option<String>,
    /// ... or a template in a file.
    #[serde(default)]
    template_file: Option<PathBuf>,
    /// The file's mode, octal (default `"0600"`).
    #[serde(default)]
    mode: Option<String>,
    /// Its owner and group: a name or a numeric id (default the agent's).
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// Run once after each change: the program and its arguments, no shell.
    #[serde(default)]
    command: Vec<String>,
    /// How long the command may run before it is killed (default 30 s, at most 10 min).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    command_timeout: Duration,
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

#[cfg(unix)]
fn id_of(kind: &str, s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(s).map_err(|_| format!("{kind} {s:?}: not a name"))?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: every pointer is to a live buffer of the size given; the result pointer is
    // checked before the entry is read, and the entry is read before `buf` is dropped.
    let id = unsafe {
        if kind == "owner" {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut out = std::ptr::null_mut();
            let rc = libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out);
            (rc == 0 && !out.is_null()).then_some(pwd.pw_uid)
        } else {
            let mut grp: libc::group = std::mem::zeroed();
            let mut out = std::ptr::null_mut();
            let rc = libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out);
            (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
        }
    };
    id.ok_or_else(|| {
        format!(
            "{kind} {s:?}: no such {}",
            if kind == "owner" { "user" } else { "group" }
        )
    })
}

#[cfg(not(unix))]
fn id_of(kind: &str, s: &str) -> Result<u32, String> {
    Err(format!(
        "{kind} {s:?}: owners and groups need a Unix system"
    ))
}

/// `dirs`, each made absolute and canonical (they must exist).
pub(crate) fn allowed_dirs(base: &Path, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    dirs.iter()
        .map(|d| {
            let d = if d.is_relative() {
                base.join(d)
            } else {
                d.clone()
            };
            std::fs::canonicalize(&d)
                .ok()
                .filter(|c| c.is_dir())
                .ok_or_else(|| {
                    Error::new(
                        Kind::Config,
                        format!(
                            "[agent] file_dirs {}: not an existing directory",
                            d.display()
                        ),
                    )
                })
        })
        .collect()
}

impl FileConfig {
    /// The entry, checked: its path inside one of `allowed` (its directory resolved, links
    /// and `..` included), exactly one source, a mode of permission bits, a program that
    /// exists.
    pub(crate) fn resolve(&self, base: &Path, allowed: &[PathBuf]) -> Result<FileSpec, Error> {
        let at = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let path = at(&self.path);
        let shown = path.display().to_string();
        let bad = |m: String| Error::new(Kind::Config, format!("[[agent.file]] {shown}: {m}"));
        let name = match path.file_name() {
            Some(n) if n != "." && n != ".." => n.to_os_string(),
            _ => return Err(bad("the path names no file".into())),
        };
        let dir = keyvault_failover::files::dir_of(&path);
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| bad(format!("its directory {}: {e}", dir.display())))?;
        if !allowed.iter().any(|a| dir.starts_with(a)) {
            return Err(bad(format!(
                "{} is outside [agent] file_dirs ({})",
                dir.display(),
                allowed
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(bad("is a directory".into()));
        }
        let source = match (&self.secret, &self.template, &self.template_file) {
            (Some(s), None, None) => {
                keyvault_failover::SecretName::new(s)
                    .map_err(|e| bad(format!("secret {s:?}: {e}")))?;
                Source::Secret(s.clone())
            }
            (None, Some(t), None) => Source::Template(Arc::from(t.as_str())),
            (None, None, Some(f)) => {
                let f = at(f);
                let bytes = keyvault_failover::files::read_bounded(&f, MAX_TEMPLATE)
                    .map_err(|e| bad(format!("template_file {}: {e}", f.display())))?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| bad(format!("template_file {}: not UTF-8", f.display())))?;
                Source::Template(Arc::from(text))
            }
            _ => {
                return Err(bad(
                    "needs exactly one of secret, template or template_file".into(),
                ))
            }
        };
        let mode = match &self.mode {
            None => 0o600,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .map_err(|_| bad(format!("mode {m:?}: octal, such as \"0640\"")))?,
        };
        let mut write = WriteOptions::default()
            .mode(mode)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(o) = &self.owner {
            write = write.owner(Some(id_of("owner", o).map_err(bad)?));
        }
        if let Some(g) = &self.group {
            write = write.group(Some(id_of("group", g).map_err(bad)?));
        }
        if self.command_timeout.is_zero() || self.command_timeout > Duration::from_secs(600) {
            return Err(bad("command_timeout: more than 0 and at most 10 min".into()));
        }
        let command = if self.command.is_empty() {
            None
        } else {
            Some(Command::new(self.command.clone(), self.command_timeout).map_err(bad)?)
        };
        Ok(FileSpec {
            path,
            source,
            write,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> FileConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn entries_are_checked() {
        let base = std::env::temp_dir().join(format!("kvf-entry-{}", std::process::id()));
        let out = base.join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        let allowed = allowed_dirs(&base, &[PathBuf::from("out")]).unwrap();
        let ok = entry("path = \"out/db.env\"\nsecret = \"db-password\"\nmode = \"0640\"");
        let spec = ok.resolve(&base, &allowed).unwrap();
        assert_eq!(spec.write.permissions(), 0o640);
        assert!(spec.path.ends_with("out/db.env"));
        for (bad, says) in [
            ("path = \"elsewhere.env\"\nsecret = \"a\"", "outside"),
            ("path = \"out/../escape.env\"\nsecret = \"a\"", "outside"),
            ("path = \"out/x\"", "exactly one"),
            (
                "path = \"out/x\"\nsecret = \"a\"\ntemplate = \"b\"",
                "exactly one",
            ),
            ("path = \"out/x\"\nsecret = \"bad name!\"", "secret"),
            (
                "path = \"out/x\"\nsecret = \"a\"\nmode = \"4755\"",
                "permission bits",
            ),
            ("path = \"out/x\"\nsecret = \"a\"\nmode = \"rw\"", "octal"),
            (
                "path = \"out/x\"\nsecret = \"a\"\ncommand = [\"no-such-program-kvf\"]",
                "no such executable",
            ),
            (
                "path = \"out/x\"\nsecret = \"a\"\nowner = \"no-such-user-kvf\"",
                "no such user",
            ),
            (
                "path = \"out/x\"\nsecret = \"a\"\ncommand_timeout = \"1h\"",
                "command_timeout",
            ),
            (
                "path = \"out/x\"\ntemplate_file = \"missing.j2\"",
                "template_file",
            ),
            ("path = \"out/sub\"\nsecret = \"a\"", "directory"),
            ("path = \"nowhere/x\"\nsecret = \"a\"", "directory"),
        ] {
            let e = entry(bad).resolve(&base, &allowed).unwrap_err();
            assert!(e.is_config() && e.to_string().contains(says), "{bad}: {e}");
        }
        assert!(allowed_dirs(&base, &[PathBuf::from("missing")]).is_err());
        std::fs::remove_dir_all(&base).ok();
    }
}
