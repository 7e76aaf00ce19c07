//! `idpatch serve`'s limits on what clients hold: header and body read timeouts (slow or silent
//! clients), the connection limit, content types taken exactly, queued cancellations counted,
//! flags checked before graphs load, and a warm-up from plain photos. Each test starts its own
//! server on loopback with the tiny set.

#![cfg(all(feature = "serve", feature = "tract"))]

mod common;
#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use server::{delete, example_request, get, metric, post_with, EventStream, Server};

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and
/// how long it took to close.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Closed with data of ours unread: a reset, as good as a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// A client that never finishes its headers, one that sends nothing, and an idle keep-alive
/// connection are all closed after `--read-timeout`; a body that stalls gets 408. Meanwhile the
/// server answers others, and with `--max-connections 4` a fifth connection is closed at once
/// (counted as rejected) while the probes still work once the idle ones are gone.
#[test]
fn slow_and_idle_clients_are_cut_off() {
    let s = Server::start(&[
        "--read-timeout",
        "1",
        "--max-connections",
        "4",
        "--warmup-size",
        "off",
    ]);
    s.wait_ready();
    let address = s.base.trim_start_matches("http://").to_string();
    // The readiness checks' connections are closed; let the server see them go, so that the four
    // below are the only ones it holds.
    std::thread::sleep(Duration::from_millis(1000));

    let mut half_headers = TcpStream::connect(&address).unwrap();
    half_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut silent = TcpStream::connect(&address).unwrap();
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut stalled = TcpStream::connect(&address).unwrap();
    stalled
        .write_all(
            b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .unwrap();
    // More connections while four are open: closed without an answer (all would be answered
    // without the limit).
    std::thread::sleep(Duration::from_millis(200));
    let answers: Vec<String> = (0..3)
        .map(|_| {
            let mut extra = TcpStream::connect(&address).unwrap();
            let _ =
                extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            read_until_closed(&mut extra, Duration::from_secs(5)).0
        })
        .collect();
    let answered = answers.iter().filter(|a| !a.is_empty()).count();
    assert!(
        answered < 3,
        "every connection over the limit was served: {answers:?}"
    );

    for (name, stream) in [("half headers", &mut half_headers), ("silent", &mut silent)] {
        let (answer, took) = read_until_closed(stream, Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "{name}: open {took:?}");
        assert!(!answer.contains("200 OK"), "{name}: {answer}");
    }
    // The idle keep-alive connection got its answer, then was closed.
    let (answer, took) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "idle keep-alive open {took:?}"
    );
    let (answer, _) = read_until_closed(&mut stalled, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");

    assert_eq!(get(&s, "/healthz").0, 200);
    assert!(metric(&s, "idpatch_rejected_total{reason=\"connections\"}") >= 1.0);
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// Only `application/json` (UTF-8) and `multipart/form-data` are bodies; look-alike types and
/// other charsets are 415, before anything is parsed.
#[test]
fn content_types_are_taken_exactly() {
    let s = Server::start(&["--warmup-size", "off"]);
    s.wait_ready();
    let body = example_request(1, 0).to_string();
    for (content_type, status) in [
        ("application/jsonp", 415),
        ("application/json-patch+json", 415),
        ("application/json; charset=utf-16", 415),
        ("text/json", 415),
        ("Application/JSON; charset=\"UTF-8\"", 200),
        ("application/json;charset=utf-8", 200),
    ] {
        let r = post_with(&s, body.as_bytes(), &[("content-type", content_type)]);
        assert_eq!(
            r.status,
            status,
            "{content_type}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A job cancelled while still queued never runs, hears that it was cancelled before its first
/// step, and is counted in `idpatch_cancelled_total` like a running one.
#[test]
fn queued_cancellations_are_counted() {
    let s = Server::start(&["--warmup-size", "off"]);
    s.wait_ready();
    let mut request = example_request(150, 3);
    request["stream"] = json!(true);
    let mut running = EventStream::open(&s, &request, &[("x-generation-id", "running-1")]);
    running.until("step");
    let mut queued = EventStream::open(&s, &request, &[("x-generation-id", "queued-1")]);
    assert_eq!(queued.until("queued")["position"], 0);
    assert_eq!(delete(&s, "queued-1", &[]).status, 202);
    let error = queued.until("error");
    assert_eq!(error["status"], 409);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cancelled before the first of 150"),
        "{message}"
    );
    assert_eq!(metric(&s, "idpatch_cancelled_total"), 1.0);
    assert_eq!(delete(&s, "running-1", &[]).status, 202);
    assert_eq!(running.until("error")["status"], 409);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&s, "idpatch_cancelled_total") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the running cancellation was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// Flags whose values cannot work fail before any graph is loaded, each a one-line error naming
/// the flag (exit status 2).
#[test]
fn unusable_flags_fail_before_loading_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let cases: [(Vec<String>, &str); 6] = [
        (
            vec!["--warmup-layout".into(), missing.display().to_string()],
            "--warmup-layout",
        ),
        (
            vec!["--warmup-size".into(), "4294967264x32".into()],
            "--warmup-size",
        ),
        (
            vec![
                "--warmup-size".into(),
                "1024x1024".into(),
                "--max-side".into(),
                "512".into(),
            ],
            "--warmup-size",
        ),
        (
            vec!["--warmup-size".into(), "33x33".into()],
            "--warmup-size",
        ),
        (
            vec!["--api-key-file".into(), missing.display().to_string()],
            "--api-key-file",
        ),
        (vec!["--read-timeout".into(), "0".into()], "--read-timeout"),
    ];
    for (flags, named) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let started = Instant::now();
        let stderr = server::serve_refuses(&flags);
        assert!(
            stderr.starts_with(&format!("error: {named}")),
            "{flags:?}: {stderr}"
        );
        // Checked before the graphs load (which takes seconds in a debug build).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{flags:?}: {:?}",
            started.elapsed()
        );
    }
}

/// The bundled example made from plain photos works as the warm-up layout: its faces are
/// detected as they would be for a request.
#[test]
fn a_layout_of_plain_photos_can_be_the_warm_up() {
    let layout = common::tiny_dir().join("examples/layout_photos.json");
    let s = Server::start(&["--warmup-layout", layout.to_str().unwrap()]);
    s.wait_ready();
    assert_eq!(
        s.events("warmed_up").len(),
        1,
        "{:?}",
        s.log.lock().unwrap()
    );
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A non-streaming client that leaves while its job runs: the job is cancelled, and the request
/// is still logged and counted, as 499 (client closed the request).
#[test]
fn a_non_streaming_client_that_leaves_is_logged_as_499() {
    let s = Server::start(&["--warmup-size", "off"]);
    s.wait_ready();
    let body = example_request(150, 4).to_string();
    let address = s.base.trim_start_matches("http://").to_string();
    let mut client = TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         x-generation-id: leaves-1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(body.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&s, "idpatch_in_flight") < 1.0 {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(client);
    let line = loop {
        let found = s
            .events("request")
            .into_iter()
            .find(|e| e["id"] == "leaves-1");
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no request line: {:?}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line["status"], 499, "{line}");
    assert!(!s.events("client_gone").is_empty());
    assert_eq!(
        metric(
            &s,
            "idpatch_requests_total{route=\"/v1/generations\",status=\"499\"}"
        ),
        1.0
    );
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A client still sending its headers when SIGTERM comes does not hold the exit past
/// `--drain-timeout` (its `--read-timeout` is far longer); a warm-up layout wider than
/// `--max-side` is refused before loading.
#[test]
fn a_slow_client_does_not_hold_the_drain_and_warmup_layouts_fit_max_side() {
    let s = Server::start(&[
        "--warmup-size",
        "off",
        "--drain-timeout",
        "1",
        "--read-timeout",
        "60",
    ]);
    s.wait_ready();
    let address = s.base.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let layout = common::tiny_dir().join("examples/layout.json");
    let stderr = server::serve_refuses(&[
        "--warmup-layout",
        layout.to_str().unwrap(),
        "--max-side",
        "128",
    ]);
    assert!(
        stderr.starts_with("error: --warmup-layout: 192x128 is larger than --max-side (128)"),
        "{stderr}"
    );
}
