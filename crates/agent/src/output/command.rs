//! The command a file entry runs once per change of its content: an argv (no shell), its
//! output bounded, killed at its timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The most output kept of each stream (the rest is read and dropped, so the child never
/// blocks on a full pipe).
const MAX_KEPT: usize = 4096;

/// A checked command: a program that exists, its arguments, its timeout.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    argv: Vec<String>,
    timeout: Duration,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It could not be started.
    NotStarted(String),
}

/// What a run did: how it ended and what it printed (each stream cut at 4 KiB).
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) ended: Ended,
    pub(crate) output: String,
}

impl Outcome {
    pub(crate) fn ok(&self) -> bool {
        self.ended == Ended::Exited(Some(0))
    }
}

/// Where `program` is: itself if it names a path, else the first match on `PATH`.
fn locate(program: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        p.is_file()
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

/// What `r` gives until its end, the first 4 KiB kept.
async fn keep<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut kept = Vec::new();
    if let Some(mut r) = r {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = MAX_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
    kept
}

impl Command {
    /// A command whose program exists and may be run now.
    pub(crate) fn new(argv: Vec<String>, timeout: Duration) -> Result<Command, String> {
        let Some(program) = argv.first() else {
            return Err("command is empty: give the program and its arguments".into());
        };
        if locate(program).is_none() {
            return Err(format!(
                "command {program:?}: no such executable (as a path, or on PATH)"
            ));
        }
        Ok(Command { argv, timeout })
    }

    /// Runs it once: no stdin, output kept up to 4 KiB a stream, killed at the timeout.
    pub(crate) async fn run(&self) -> Outcome {
        let mut c = tokio::process::Command::new(&self.argv[0]);
        c.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match c.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                return Outcome {
                    ended: Ended::NotStarted(e.to_string()),
                    output: String::new(),
                }
            }
        };
        let (out, err) = (child.stdout.take(), child.stderr.take());
        // Read while it runs (a full pipe would stop it); after it exits, a second more for
        // what is left (a daemon it started may hold the pipes open for ever).
        let (out, err) = (tokio::spawn(keep(out)), tokio::spawn(keep(err)));
        let ended = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(s)) => Ended::Exited(s.code()),
            Ok(Err(e)) => Ended::NotStarted(e.to_string()),
            Err(_) => {
                let _ = child.start_kill();
                // Reaped within a bound: a child in uninterruptible sleep is left to the OS.
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                Ended::TimedOut
            }
        };
        let mut output = String::new();
        for task in [out, err] {
            let abort = task.abort_handle();
            match tokio::time::timeout(Duration::from_secs(1), task).await {
                Ok(Ok(kept)) => output.push_str(&String::from_utf8_lossy(&kept)),
                _ => abort.abort(),
            }
        }
        Outcome { ended, output }
    }

    /// The program, for logs (the arguments may be anything; the program is the operator's).
    pub(crate) fn program(&self) -> &str {
        &self.argv[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_does_not_exist_is_refused() {
        let e =
            Command::new(vec!["no-such-program-kvf".into()], Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no such executable"), "{e}");
        assert!(Command::new(vec![], Duration::from_secs(1)).is_err());
        assert!(Command::new(vec!["/etc/passwd".into()], Duration::from_secs(1)).is_err());
        assert!(Command::new(vec!["sh".into()], Duration::from_secs(1)).is_ok());
    }

    #[tokio::test]
    async fn output_is_bounded_and_the_status_kept() {
        let c = Command::new(
            vec![
                "sh".into(),
                "-c".into(),
                "head -c 100000 /dev/zero | tr '\\0' x; echo oops >&2; exit 3".into(),
            ],
            Duration::from_secs(30),
        )
        .unwrap();
        let o = c.run().await;
        assert_eq!(o.ended, Ended::Exited(Some(3)));
        assert!(!o.ok());
        assert!(o.output.len() <= 2 * MAX_KEPT, "{}", o.output.len());
        assert!(
            o.output.ends_with("oops\n"),
            "{:?}",
            &o.output[o.output.len() - 10..]
        );
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_at_its_timeout() {
        let c = Command::new(
            vec!["sleep".into(), "600".into()],
            Duration::from_millis(200),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let o = tokio::time::timeout(Duration::from_secs(30), c.run())
            .await
            .expect("the run ends within 30 s");
        assert_eq!(o.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
