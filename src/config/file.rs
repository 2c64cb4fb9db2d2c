//! Reading a configuration file: bounded, UTF-8, with an optional table of a tool's own (the
//! agent's `[agent]`) taken out before the client's part is parsed.

use super::Config;
use crate::error::Error;

impl Config {
    /// Reads and validates a TOML configuration file; a relative `ca_bundle` is taken from
    /// the file's directory.
    ///
    /// # Errors
    /// [`Error::is_config`] naming the file and what is wrong.
    pub fn from_file(path: &std::path::Path) -> Result<Config, Error> {
        Self::from_file_with(path, None).map(|(c, _)| c)
    }

    /// [`Config::from_file`] for a file that also holds a table of some tool's own (the
    /// agent's `[agent]`): that table is taken out and returned, unparsed, and the rest is
    /// the client's configuration.
    ///
    /// # Errors
    /// [`Error::is_config`] naming the file and what is wrong.
    pub fn from_file_with(
        path: &std::path::Path,
        section: Option<&str>,
    ) -> Result<(Config, Option<toml::Table>), Error> {
        // A regular file of at most 1 MiB: a FIFO or a device at the path is refused at once.
        let bytes = crate::files::read_bounded(path, 1024 * 1024)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::config(format!("{}: not UTF-8 text", path.display())))?;
        let in_file = |e: Error| Error::config(format!("{}: {e}", path.display()));
        // Parsed once: the client's part is taken from the same table its section came from.
        let (config, extra) = match section {
            None => (Config::from_toml(&text).map_err(in_file)?, None),
            Some(key) => {
                let mut t: toml::Table = toml::from_str(&text)
                    .map_err(|e| in_file(Error::config(format!("invalid TOML: {e}"))))?;
                let extra = match t.remove(key) {
                    None => None,
                    Some(toml::Value::Table(x)) => Some(x),
                    Some(_) => {
                        return Err(in_file(Error::config(format!("[{key}] must be a table"))))
                    }
                };
                (Config::from_table(t).map_err(in_file)?, extra)
            }
        };
        let mut config = config;
        if let (Some(ca), Some(dir)) = (&config.ca_bundle, path.parent()) {
            if ca.is_relative() {
                config.ca_bundle = Some(dir.join(ca));
            }
        }
        Ok((config, extra))
    }
}
