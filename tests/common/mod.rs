//! Helpers shared by the integration test files: where the repository's test inputs live, and
//! running the `idpatch` binary.
//!
//! Each test file compiles this module into its own crate and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled tiny model set.
pub fn tiny_dir() -> PathBuf {
    root().join("models/tiny")
}

/// One suite's reference data, `tests/data/<suite>`.
pub fn test_data(suite: &str) -> PathBuf {
    root().join("tests/data").join(suite)
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `idpatch ... --json` output: one JSON object per line.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A command for the `idpatch` binary under test.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idpatch"))
}

/// Runs `idpatch` with `args` and waits for it.
pub fn output(args: &[&str]) -> Output {
    command().args(args).output().unwrap()
}

/// Exit code, stdout and stderr of a finished run.
pub fn code_stdout_stderr(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `idpatch` with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    code_stdout_stderr(output(args))
}

/// `idpatch bench --models models/tiny ARGS`: (exit code, stdout, stderr).
pub fn bench(args: &[&str]) -> (i32, String, String) {
    let out = command()
        .arg("bench")
        .arg("--models")
        .arg(tiny_dir())
        .args(args)
        .output()
        .unwrap();
    code_stdout_stderr(out)
}

/// Runs every graph of the bundled tiny set on `backend` against the PyTorch goldens and asserts
/// each is within tolerance with a non-zero reference output.
pub fn assert_tiny_set_matches_goldens(backend: &dyn idpatch::backend::Backend) {
    use idpatch::manifest::{Checksums, ModelSet, Role};
    let set = ModelSet::open(&tiny_dir(), Checksums::Verify).unwrap();
    for role in Role::ALL {
        let report = idpatch::validate::validate_graph(&set, backend, role, None).unwrap();
        assert!(
            report.passed(),
            "{role}: max rel err {:.3e} over tolerance {:.1e}",
            report.max_rel_err(),
            report.tolerance
        );
        assert!(
            report.outputs.iter().all(|o| o.scale > 0.0),
            "{role}: an all-zero golden output"
        );
    }
}
