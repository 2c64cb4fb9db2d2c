//! Microsoft's own SDKs for tests that run them as real programs: the Python SDK
//! (`azure-keyvault-secrets`, from PyPI, in a virtual environment) and the JavaScript SDK
//! (`@azure/keyvault-secrets`, from npm), each installed once under a directory of the
//! caller's (a test's `CARGO_TARGET_TMPDIR`; `.ci/run` installs them there beforehand).
//! Blocking: call them from `spawn_blocking` in async tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The Python SDK's version the tests pin.
pub const PYTHON_SDK: &str = "azure-keyvault-secrets==4.12.0";
/// The JavaScript SDK's major version the tests take.
pub const JS_SDK: &str = "@azure/keyvault-secrets@4";

fn run(mut c: Command, what: &str) -> Result<(), Error> {
    let out = c
        .output()
        .map_err(|e| Error::io(format!("{what} does not run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// The Python interpreter of a virtual environment in `tmp/kv-python` with the Python SDK,
/// made (python3 -m venv, pip install) if it is not there yet.
///
/// # Errors
/// When python3 or pip cannot run or fail (no network to PyPI, for one).
pub fn python(tmp: &Path) -> Result<PathBuf, Error> {
    let venv = tmp.join("kv-python");
    let py = venv.join("bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import azure.keyvault.secrets"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&venv);
        run(c, "python3 -m venv")?;
        let mut c = Command::new(venv.join("bin/pip"));
        c.args(["install", "-q", PYTHON_SDK]);
        run(c, "pip install")?;
    }
    Ok(py)
}

/// A directory `tmp/kv-js` with the JavaScript SDK in its `node_modules`, installed (npm) if
/// it is not there yet. ES modules resolve packages from the script's own folder: run a script
/// copied into it.
///
/// # Errors
/// When npm cannot run or fails.
pub fn js(tmp: &Path) -> Result<PathBuf, Error> {
    let home = tmp.join("kv-js");
    if !home.join("node_modules/@azure/keyvault-secrets").exists() {
        std::fs::create_dir_all(&home)
            .map_err(|e| Error::io(format!("{}: {e}", home.display())))?;
        let mut c = Command::new("npm");
        c.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&home)
            .arg(JS_SDK);
        run(c, "npm install")?;
    }
    Ok(home)
}
