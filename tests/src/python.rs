//! A Python for the tests that drive real Python tools (the Prometheus text parser,
//! schemathesis): `POSTERN_TEST_PYTHON` if set (.ci/run sets it), else a venv under the cargo
//! target directory (`<target>/postern-test-python`, the one tests/tests/gateway_mcp.rs uses),
//! filled from tests/mcp/requirements.txt when it lacks the module. Without one the test fails
//! and says how to get one: it never skips.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest `python -m venv` plus `pip install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest an import check may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

/// A Python that can `import module`, found or made (a panic saying how to get one).
pub fn with_module(module: &str) -> PathBuf {
    find_python(module)
}

fn can_import(python: &Path, module: &str) -> Result<(), String> {
    let out = run(
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .current_dir(std::env::temp_dir()),
        PYTHON_TIMEOUT,
    )?;
    if out.0 {
        Ok(())
    } else {
        Err(out.2.trim().lines().last().unwrap_or_default().to_owned())
    }
}

fn find_python(module: &str) -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/requirements.txt");
    if let Some(python) = std::env::var_os("POSTERN_TEST_PYTHON") {
        let python = match Path::new(&python).components().count() {
            1 => PathBuf::from(python),
            _ => std::path::absolute(&python).expect("absolute POSTERN_TEST_PYTHON"),
        };
        if let Err(why) = can_import(&python, module) {
            panic!(
                "POSTERN_TEST_PYTHON={} cannot import {module}: {why}\n\
                 Install it with `{} -m pip install -r {}`, or unset POSTERN_TEST_PYTHON and \
                 this test makes its own venv.",
                python.display(),
                python.display(),
                requirements.display()
            );
        }
        return python;
    }
    // The venv tests/tests/gateway_mcp.rs makes too: `<target>/postern-test-python`.
    let venv = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir)
        .join("postern-test-python");
    let python = venv.join("bin").join("python");
    if can_import(&python, module).is_ok() {
        return python;
    }
    let help = "Install python3 with venv and pip (Debian/Ubuntu: apt-get install -y python3 \
                python3-venv python3-pip), or set POSTERN_TEST_PYTHON to a Python that has the \
                packages in tests/mcp/requirements.txt.";
    eprintln!(
        "installing tests/mcp/requirements.txt into {} (first run only, for {module})",
        venv.display()
    );
    if !python.exists() {
        let made = run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .current_dir(std::env::temp_dir()),
            INSTALL_TIMEOUT,
        );
        match made {
            Ok((true, ..)) => {}
            Ok((false, out, err)) => panic!("`python3 -m venv` failed\n{out}{err}\n{help}"),
            Err(e) => panic!("{e}\n{help}"),
        }
    }
    let installed = run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .current_dir(std::env::temp_dir()),
        INSTALL_TIMEOUT,
    );
    match installed {
        Ok((true, ..)) => {}
        Ok((false, out, err)) => panic!("pip install failed\n{out}{err}\n{help}"),
        Err(e) => panic!("{e}\n{help}"),
    }
    if let Err(why) = can_import(&python, module) {
        panic!(
            "{} still cannot import {module}: {why}\n{help}",
            python.display()
        );
    }
    python
}

/// Runs `cmd` to completion within `timeout`: (success, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<(bool, String, String), String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    // The pipes close with the child (no grandchildren here).
    std::thread::sleep(Duration::from_millis(20));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Ok((status.success(), text(&stdout), text(&stderr)))
}

/// Copies everything `from` yields into a shared buffer, on a thread of its own.
pub fn drain(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = from.read(&mut chunk) {
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}
