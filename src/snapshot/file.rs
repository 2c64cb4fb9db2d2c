//! The snapshot's file: written atomically through a private temporary file nobody can aim
//! elsewhere.

use std::io::Write;
use std::path::Path;

/// `.<file>.tmp-<32 random hex digits>`.
pub(super) fn temp_name(file_name: &std::ffi::OsStr) -> std::io::Result<std::ffi::OsString> {
    let mut r = [0u8; 16];
    aws_lc_rs::rand::fill(&mut r)
        .map_err(|_| std::io::Error::other("no random name for the temporary file"))?;
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(".tmp-");
    for b in r {
        name.push(format!("{b:02x}"));
    }
    Ok(name)
}

/// Temporary file (0600) beside `path`, fsync, rename over `path`, fsync of the directory.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = crate::files::dir_of(path);
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    // A fresh name nobody can guess, created new (never opened if it exists, never through a
    // symbolic link someone put in the directory), so its mode is ours: 0600.
    let tmp = dir.join(temp_name(file_name)?);
    let mut f = crate::files::create_private(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
