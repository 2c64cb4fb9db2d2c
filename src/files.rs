//! Reading the files an operator names (the configuration, a CA bundle, the agent's token, a
//! snapshot and its key): regular files only, bounded in size, never blocked by a FIFO or read
//! without end from a device; the permission rule for files that hold a secret; and atomic
//! replacement ([`write_atomically`]) for the files the project writes.
//!
//! ```
//! use keyvault_failover::files;
//! let path = std::env::temp_dir().join(format!("kvf-doc-files-{}", std::process::id()));
//! std::fs::write(&path, "hello").unwrap();
//! assert_eq!(&files::read_bounded(&path, 16).unwrap()[..], b"hello");
//! let e = files::read_bounded(&path, 4).unwrap_err();
//! assert!(e.to_string().contains("more than 4 bytes"));
//! std::fs::remove_file(&path).ok();
//! ```

use std::io::{self, Read};
use std::path::Path;

use secrecy::zeroize::Zeroizing;

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The whole of the regular file at `path`, at most `max` bytes, in a buffer zeroed when
/// dropped (and never reallocated while it is read, so no copy is left behind).
///
/// The file is opened without blocking (a FIFO at the path cannot hold the caller up), then
/// checked through the open descriptor: anything but a regular file (a FIFO, a device, a
/// directory, a socket) is refused, as is a file over `max` bytes or one that grows past it
/// while it is read. Symbolic links are followed.
///
/// # Errors
/// The open's own error, or [`io::ErrorKind::InvalidInput`] saying what the file is.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = opts.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused(format!(
            "not a regular file (a {})",
            kind_of(&meta.file_type())
        )));
    }
    if meta.len() > max {
        return Err(refused(format!(
            "{} bytes, more than {max} bytes",
            meta.len()
        )));
    }
    // One byte more than allowed shows a file that grew since it was measured.
    let cap = usize::try_from(meta.len().min(max) + 1)
        .map_err(|_| refused(format!("more than {max} bytes")))?;
    let mut buf = Zeroizing::new(vec![0u8; cap]);
    let mut n = 0;
    while n < cap {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n == cap {
        return Err(refused(format!(
            "more than {max} bytes (it grew while it was read)"
        )));
    }
    buf.truncate(n);
    Ok(buf)
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// The directory `path` is in (`.` for a bare file name).
pub fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates `path` new, for writing, private to its owner (mode 0600 on Unix): never opened if
/// it exists, never through a symbolic link someone put there, so the mode is the one asked.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// How [`write_atomically`] leaves the file it writes: its mode (exactly, whatever the umask)
/// and, where this process may set them, its owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
}

impl Default for WriteOptions {
    /// Private to its owner (0600), owner and group those of this process.
    fn default() -> Self {
        WriteOptions {
            mode: 0o600,
            owner: None,
            group: None,
        }
    }
}

impl WriteOptions {
    /// The permission bits (at most `0o777`: no setuid, setgid or sticky bit).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for bits beyond `0o777`.
    pub fn mode(mut self, mode: u32) -> io::Result<Self> {
        if mode & !0o777 != 0 {
            return Err(refused(format!(
                "mode {mode:o}: permission bits only (at most 777)"
            )));
        }
        self.mode = mode;
        Ok(self)
    }

    /// The owner's user id (`None`: this process's).
    pub fn owner(mut self, uid: Option<u32>) -> Self {
        self.owner = uid;
        self
    }

    /// The group id (`None`: this process's).
    pub fn group(mut self, gid: Option<u32>) -> Self {
        self.group = gid;
        self
    }

    /// The permission bits asked for.
    pub fn permissions(&self) -> u32 {
        self.mode
    }
}

/// `.<file>.tmp-<16 hex digits>`: a name no one can predict (the per-process random keys of
/// std's hasher, a counter and the time), created exclusively, so a name someone guessed only
/// fails the write.
pub(crate) fn temp_name(file_name: &std::ffi::OsStr) -> std::ffi::OsString {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(format!(".tmp-{:016x}", h.finish()));
    name
}

/// Replaces the file at `path` with `bytes`, atomically: a reader sees the old content or the
/// new, never a part, and a failure (a full or read-only file system) leaves the old file as
/// it was.
///
/// A temporary file with an unpredictable name is created exclusively in `path`'s directory
/// (never opened if something is at that name, never through a symbolic link someone put
/// there), private while it is written; then its owner, group and mode are set, it is
/// fsynced and renamed over `path` (a symbolic link at `path` is replaced, not followed), and
/// the directory is fsynced. The temporary file is removed on any failure.
///
/// ```
/// use keyvault_failover::files::{write_atomically, WriteOptions};
/// let path = std::env::temp_dir().join(format!("kvf-doc-atomic-{}", std::process::id()));
/// write_atomically(&path, b"v1", &WriteOptions::default()).unwrap();
/// write_atomically(&path, b"v2", &WriteOptions::default().mode(0o640).unwrap()).unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"v2");
/// # #[cfg(unix)] {
/// use std::os::unix::fs::PermissionsExt;
/// assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
/// # }
/// std::fs::remove_file(&path).ok();
/// ```
///
/// # Errors
/// The failing step's error; `path` is then unchanged.
pub fn write_atomically(path: &Path, bytes: &[u8], opts: &WriteOptions) -> io::Result<()> {
    use std::io::Write;
    let dir = dir_of(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| refused("the path names no file".into()))?;
    let tmp = dir.join(temp_name(file_name));
    let mut f = create_private(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if opts.owner.is_some() || opts.group.is_some() {
                std::os::unix::fs::fchown(&f, opts.owner, opts.group)?;
            }
            // After chown (which may clear bits), and exactly: the umask played no part.
            f.set_permissions(std::fs::Permissions::from_mode(opts.mode))?;
        }
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

/// Whether the file at `path` (its target, if a symbolic link) is private enough to hold a
/// secret: on Unix, no access at all for other users and no write for its group (ssh's and
/// PostgreSQL's rule for key files; a group read stays allowed, as a Kubernetes secret
/// mounted with `fsGroup` needs). Elsewhere always `Ok`.
///
/// # Errors
/// A sentence naming the mode found and the fix (`chmod 600`).
pub fn check_private(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o027 != 0 {
            return Err(format!(
                "mode {mode:03o} lets other local users read or change it (allowed: no access \
                 for others, at most read for the group); run `chmod 600` on it"
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kvf-files-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn regular_files_within_the_bound_are_read_whole() {
        let d = dir("regular");
        let p = d.join("f");
        std::fs::write(&p, vec![7u8; 1000]).unwrap();
        assert_eq!(read_bounded(&p, 1000).unwrap().len(), 1000);
        let e = read_bounded(&p, 999).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        std::fs::write(&p, b"").unwrap();
        assert!(read_bounded(&p, 10).unwrap().is_empty());
        let e = read_bounded(&d, 10).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    /// A FIFO is refused at once (before: `std::fs::read` blocked until a writer came), and a
    /// device that never ends is refused without being read (before: read until memory ran
    /// out).
    #[cfg(unix)]
    #[test]
    fn a_fifo_or_a_device_is_refused_without_blocking() {
        let d = dir("fifo");
        let fifo = d.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = read_bounded(&fifo, 4096).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_bounded(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[cfg(unix)]
    #[test]
    fn files_others_can_read_are_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let p = d.join("token");
        std::fs::write(&p, "t").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o644, false),
            (0o660, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_private(&p).is_ok(), ok, "{mode:o}");
        }
        std::fs::remove_dir_all(&d).ok();
    }
}
