//! `idpatch serve`'s engine side: several workers (`--workers`, `--device-id`), a graph that
//! fails (500 naming the step and graph; a failed warm-up stops the server), and the
//! device-memory gauge. Each test starts its own server on loopback with the tiny set.

#![cfg(all(feature = "serve", feature = "tract"))]

mod common;
#[path = "common/poisoned.rs"]
mod poisoned;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use serde_json::json;

use server::{example_request, get, metric, post, EventStream, Server};

/// Two workers take two jobs at once (each stream says which worker runs it, and the second
/// does not wait for the first), and each worker's own copy of the graphs gives the image
/// `idpatch generate` gives for the same request, byte for byte.
#[test]
fn two_workers_run_two_jobs_at_once_with_the_cli_pixels() {
    let s = Server::start(&["--workers", "2"]);
    s.wait_ready();
    assert_eq!(metric(&s, "idpatch_workers_ready"), 2.0);
    // Long enough (about 40 ms a step) that the first is still running when the second starts.
    let steps = 60;
    let mut request = example_request(steps, 21);
    request["stream"] = json!(true);
    request["response_format"] = json!("b64_json");
    let mut first = EventStream::open(&s, &request, &[]);
    assert_eq!(first.status, 200);
    let started_first = first.until("started");
    let mut second = EventStream::open(&s, &request, &[]);
    let started_second = second.until("started");
    let workers = [&started_first["worker"], &started_second["worker"]];
    assert!(
        workers == [&json!(0), &json!(1)] || workers == [&json!(1), &json!(0)],
        "{started_first} {started_second}"
    );
    // The second did not wait for the first to finish (which takes over 2 s).
    let waited = started_second["queue_wait"].as_f64().unwrap();
    assert!(
        waited < 1.0,
        "the second job waited {waited} s for a worker"
    );
    let images: Vec<Vec<u8>> = [first, second]
        .iter_mut()
        .map(|stream| {
            let image = stream.until("image");
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(image["image"].as_str().unwrap())
                .unwrap()
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli.png");
    let layout = common::tiny_dir().join("examples/layout.json");
    let (code, _, err) = common::run(&[
        "generate",
        "--layout",
        layout.to_str().unwrap(),
        "--prompt",
        "three friends in a park",
        "--steps",
        &steps.to_string(),
        "--seed",
        "21",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cli = std::fs::read(&out).unwrap();
    for (i, image) in images.iter().enumerate() {
        assert!(
            image == &cli,
            "worker of job {i}: image differs from idpatch generate's"
        );
    }
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A NaN from a graph mid-run is a 500 that names the graph and the step; the worker goes on
/// (a second request gets the same answer, health and metrics still answer), and nothing is
/// left running.
#[test]
fn a_graph_failure_is_a_500_naming_graph_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let set = poisoned::poisoned_set(dir.path(), "controlnet");
    let s = Server::start(&["--models", set.to_str().unwrap(), "--warmup-size", "off"]);
    s.wait_ready();
    for attempt in 0..2 {
        let r = post(&s, &example_request(3, 5));
        assert_eq!(
            r.status,
            500,
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (message, _) = r.error();
        assert!(
            message.contains("graph controlnet: NaN or infinity"),
            "{message}"
        );
        assert!(message.contains("at step 0 of 3"), "{message}");
    }
    // The same failure in a stream: an `error` event with the status the request would have had.
    let mut request = example_request(3, 5);
    request["stream"] = json!(true);
    let mut stream = EventStream::open(&s, &request, &[]);
    let error = stream.until("error");
    assert_eq!(error["status"], 500, "{error}");
    assert_eq!(get(&s, "/healthz").0, 200);
    assert_eq!(metric(&s, "idpatch_in_flight"), 0.0);
    assert_eq!(
        metric(
            &s,
            "idpatch_requests_total{route=\"/v1/generations\",status=\"500\"}"
        ),
        2.0
    );
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A warm-up that fails (the same poisoned set) stops the server before it is ever ready:
/// exit status 1, the failure in the log, no request served.
#[test]
fn a_failed_warmup_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let set = poisoned::poisoned_set(dir.path(), "controlnet");
    let s = Server::start(&["--models", set.to_str().unwrap()]);
    let code = s.wait_exit(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{:?}", s.log.lock().unwrap());
    let failed = s.events("warmup_failed");
    assert_eq!(failed.len(), 1, "{:?}", s.log.lock().unwrap());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("graph controlnet: NaN or infinity"),
        "{}",
        failed[0]
    );
}

/// Memory gauges: on ONNX Runtime (CPU provider, whose arena reports its use) each worker's
/// bytes in use, reserved and peak are exported and consistent; on tract, which reports no
/// memory, the series is absent rather than zero.
#[test]
fn device_memory_is_exported_where_the_backend_reports_it() {
    let s = Server::start(&["--backend", "ort", "--workers", "2"]);
    s.wait_ready();
    let (_, text) = get(&s, "/metrics");
    let value = |worker: &str, kind: &str| {
        let prefix = format!(
            "idpatch_device_memory_bytes{{device=\"cpu\",kind=\"{kind}\",worker=\"{worker}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
            .parse::<f64>()
            .unwrap()
    };
    for worker in ["0", "1"] {
        let (in_use, reserved, peak) = (
            value(worker, "in_use"),
            value(worker, "reserved"),
            value(worker, "peak"),
        );
        // The arenas keep the weights' and the warm-up's activations: megabytes on the tiny set.
        assert!(reserved >= 1e6, "worker {worker}: reserved {reserved}");
        assert!(
            in_use <= reserved && peak <= reserved,
            "{in_use} {peak} {reserved}"
        );
        assert!(peak >= in_use, "{peak} < {in_use}");
    }
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));

    let s = Server::start(&["--warmup-size", "off"]);
    s.wait_ready();
    let (_, text) = get(&s, "/metrics");
    assert!(!text.contains("idpatch_device_memory_bytes{"), "{text}");
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// Worker flags that cannot be honoured are one-line errors with exit status 2, before any
/// graph runs: devices without a GPU provider, devices on the CPU provider, both worker flags,
/// and worker counts out of range. On a machine without a usable CUDA device, `--ep cuda
/// --device-id 0,1` fails rather than serving from the CPU.
#[test]
fn worker_flags_that_cannot_be_honoured_are_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&["--device-id", "0,1"], "--device-id"),
        (&["--ep", "cuda", "--device-id", "0,0"], "given twice"),
        (&["--device-id", "0", "--workers", "2"], "--workers"),
        (&["--workers", "0"], "--workers"),
        (&["--workers", "65"], "--workers"),
        (&["--backend", "tract", "--device-id", "0"], "--device-id"),
    ];
    for (flags, named) in cases {
        let stderr = server::serve_refuses(flags);
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
    if !std::path::Path::new("/dev/nvidia0").exists() {
        let stderr = server::serve_refuses(&["--ep", "cuda", "--device-id", "0,1"]);
        assert!(
            stderr.contains("cannot start the cuda provider"),
            "{stderr}"
        );
    }
}
