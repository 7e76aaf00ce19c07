//! Where a graph's time goes, from ONNX Runtime's profiler trace (`idpatch bench --profile`):
//! kernel time per operator type and provider, over the runs that were timed.
//!
//! ONNX Runtime writes a Chrome-trace JSON array. Each session run is one `Session` event named
//! `model_run`; each node run adds `Node` events, of which `<node>_kernel_time` carries the
//! kernel's duration (`dur`, microseconds) and `args.op_name` / `args.provider` say what ran
//! where (after graph optimisation: a quantized convolution shows as `QLinearConv`, one left in
//! float as `Conv` or `FusedConv`). The fence events around each kernel are not counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest trace file read (a run of the full SDXL UNet adds a few MB).
pub const MAX_TRACE_BYTES: u64 = 2 << 30;

/// Kernel time of one operator type on one provider.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// ONNX operator type after ONNX Runtime's graph optimisation (`Conv`, `QLinearConv`, ...).
    pub op: String,
    /// Execution provider without the `ExecutionProvider` suffix (`CPU`, `CUDA`, ...).
    pub provider: String,
    /// Distinct nodes of this type.
    pub nodes: usize,
    /// Kernel time per timed run, milliseconds.
    pub ms_per_run: f64,
    /// Share of all kernel time in the timed runs, 0 to 1.
    pub share: f64,
}

/// A profiled graph: operator types by kernel time, most expensive first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Profile {
    pub file: PathBuf,
    /// Runs counted (the trace's `model_run` events after the skipped ones).
    pub runs: usize,
    /// Kernel time per counted run, all operators together, milliseconds. Less than the run's
    /// wall time: what runs between kernels (allocation, copies, scheduling) is not in it.
    pub kernel_ms_per_run: f64,
    pub ops: Vec<OpTime>,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    dur: u64,
    #[serde(default)]
    args: EventArgs,
}

#[derive(serde::Deserialize, Default)]
struct EventArgs {
    #[serde(default)]
    op_name: String,
    #[serde(default)]
    provider: String,
}

/// Reads an ONNX Runtime trace of `total_runs` session runs and sums kernel time per operator
/// type and provider over the runs after the first `skip_runs` (a benchmark's untimed warm-up
/// runs).
///
/// Errors: the file cannot be read, is over [`MAX_TRACE_BYTES`], is not an ONNX Runtime trace,
/// holds fewer than `total_runs` runs (ONNX Runtime stops recording at a million events, so a
/// long profile is cut short) or none after the skipped ones.
pub fn summarize(file: &Path, skip_runs: usize, total_runs: usize) -> Result<Profile> {
    let bad = |reason: String| Error::invalid_input(file.display().to_string(), reason);
    let len = std::fs::metadata(file)
        .map_err(|e| Error::io(file, e))?
        .len();
    if len > MAX_TRACE_BYTES {
        return Err(bad(format!(
            "the trace is {len} bytes, more than the {MAX_TRACE_BYTES} read"
        )));
    }
    let reader =
        std::io::BufReader::new(std::fs::File::open(file).map_err(|e| Error::io(file, e))?);
    let events: Vec<Event> = serde_json::from_reader(reader)
        .map_err(|e| bad(format!("not an ONNX Runtime profiler trace: {e}")))?;
    let mut run_starts: Vec<u64> = events
        .iter()
        .filter(|e| e.cat == "Session" && e.name == "model_run")
        .map(|e| e.ts)
        .collect();
    run_starts.sort_unstable();
    if run_starts.len() < total_runs {
        return Err(bad(format!(
            "the trace holds {} of the {total_runs} runs: ONNX Runtime stops recording at a \
             million events; profile fewer runs",
            run_starts.len()
        )));
    }
    let runs = run_starts.len().saturating_sub(skip_runs);
    if runs == 0 {
        return Err(bad(format!(
            "the trace holds {} runs, none after the {skip_runs} skipped",
            run_starts.len()
        )));
    }
    let from = run_starts[skip_runs];
    let mut by_op: HashMap<(String, String), (u64, std::collections::HashSet<&str>)> =
        HashMap::new();
    let mut total_us = 0u64;
    for e in &events {
        let Some(node) = e.name.strip_suffix("_kernel_time") else {
            continue;
        };
        if e.cat != "Node" || e.ts < from {
            continue;
        }
        let provider = e
            .args
            .provider
            .trim_end_matches("ExecutionProvider")
            .to_string();
        let slot = by_op.entry((e.args.op_name.clone(), provider)).or_default();
        slot.0 += e.dur;
        slot.1.insert(node);
        total_us += e.dur;
    }
    let per_run = |us: u64| us as f64 / 1e3 / runs as f64;
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|((op, provider), (us, nodes))| OpTime {
            op,
            provider,
            nodes: nodes.len(),
            ms_per_run: per_run(us),
            share: if total_us == 0 {
                0.0
            } else {
                us as f64 / total_us as f64
            },
        })
        .collect();
    ops.sort_by(|a, b| {
        b.ms_per_run
            .total_cmp(&a.ms_per_run)
            .then_with(|| (&a.op, &a.provider).cmp(&(&b.op, &b.provider)))
    });
    Ok(Profile {
        file: file.to_path_buf(),
        runs,
        kernel_ms_per_run: per_run(total_us),
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace in ONNX Runtime's layout: one warm-up run, then two runs of a Conv and a
    /// QLinearConv node (fence events are not kernel time).
    const TRACE: &str = r#"[
{"cat":"Session","pid":1,"tid":1,"dur":900,"ts":10,"ph":"X","name":"session_initialization","args":{}},
{"cat":"Session","pid":1,"tid":1,"dur":50,"ts":1000,"ph":"X","name":"model_run","args":{}},
{"cat":"Node","pid":1,"tid":1,"dur":40,"ts":1001,"ph":"X","name":"conv_in_kernel_time","args":{"op_name":"Conv","provider":"CPUExecutionProvider"}},
{"cat":"Session","pid":1,"tid":1,"dur":50,"ts":2000,"ph":"X","name":"model_run","args":{}},
{"cat":"Node","pid":1,"tid":1,"dur":0,"ts":2001,"ph":"X","name":"conv_in_fence_before","args":{"op_name":"Conv"}},
{"cat":"Node","pid":1,"tid":1,"dur":30,"ts":2001,"ph":"X","name":"conv_in_kernel_time","args":{"op_name":"Conv","provider":"CPUExecutionProvider"}},
{"cat":"Node","pid":1,"tid":1,"dur":10,"ts":2031,"ph":"X","name":"down_quant_kernel_time","args":{"op_name":"QLinearConv","provider":"CPUExecutionProvider"}},
{"cat":"Session","pid":1,"tid":1,"dur":50,"ts":3000,"ph":"X","name":"model_run","args":{}},
{"cat":"Node","pid":1,"tid":1,"dur":50,"ts":3001,"ph":"X","name":"conv_in_kernel_time","args":{"op_name":"Conv","provider":"CPUExecutionProvider"}},
{"cat":"Node","pid":1,"tid":1,"dur":10,"ts":3051,"ph":"X","name":"down_quant_kernel_time","args":{"op_name":"QLinearConv","provider":"CPUExecutionProvider"}}
]"#;

    fn trace_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unet_2026.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn kernel_time_per_operator_after_the_warmup_runs() {
        let (_dir, path) = trace_file(TRACE);
        let p = summarize(&path, 1, 3).unwrap();
        assert_eq!(p.runs, 2);
        // (30 + 10 + 50 + 10) us over 2 runs.
        assert!((p.kernel_ms_per_run - 0.05).abs() < 1e-12);
        assert_eq!(p.ops.len(), 2);
        assert_eq!(
            (p.ops[0].op.as_str(), p.ops[0].provider.as_str()),
            ("Conv", "CPU")
        );
        assert!((p.ops[0].ms_per_run - 0.04).abs() < 1e-12);
        assert!((p.ops[0].share - 0.8).abs() < 1e-12);
        assert_eq!((p.ops[1].op.as_str(), p.ops[1].nodes), ("QLinearConv", 1));
        assert!((p.ops[1].share - 0.2).abs() < 1e-12);
        // Without skipping, the warm-up run's 40 us count too.
        let all = summarize(&path, 0, 3).unwrap();
        assert_eq!(all.runs, 3);
        assert!((all.kernel_ms_per_run - 0.14 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_trace_without_counted_runs_or_in_another_format_is_an_error_naming_the_file() {
        let (_dir, path) = trace_file(TRACE);
        let e = summarize(&path, 3, 3).unwrap_err().to_string();
        assert!(e.contains("3 runs, none after the 3 skipped"), "{e}");
        assert!(e.contains("unet_2026.json"), "{e}");
        // A trace cut short: fewer runs than were made.
        let e = summarize(&path, 1, 5).unwrap_err().to_string();
        assert!(e.contains("holds 3 of the 5 runs"), "{e}");
        let (_dir, path) = trace_file("{\"traceEvents\": 1}");
        let e = summarize(&path, 0, 1).unwrap_err().to_string();
        assert!(e.contains("not an ONNX Runtime profiler trace"), "{e}");
    }
}
