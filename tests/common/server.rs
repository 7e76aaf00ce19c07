//! Starting `idpatch serve` on loopback for the server's tests, and talking to it over HTTP with
//! a real client (ureq).
//!
//! Each server listens on a free port (`--listen 127.0.0.1:0`; the port comes from its
//! `listening` log line), so test binaries and tests running in parallel never collide. Servers
//! are started by one long-lived thread and get SIGKILL when the test process ends (Linux
//! `PR_SET_PDEATHSIG`), so none outlives the tests.
//!
//! Each test file that includes this uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{root, tiny_dir};

/// A running server.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub pid: u32,
    child: Mutex<Child>,
    /// Every line the server wrote on stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Arguments every test server gets unless `extra` gives its own: the tiny set (`--models`), a
/// free port, and the warm-up on the bundled example's shapes (192x128, 3 people), which the
/// tests' requests use too (`--warmup-layout`, left out when `extra` has a `--warmup-*` flag).
fn base_args(extra: &[&str]) -> Vec<String> {
    let layout = tiny_dir().join("examples/layout.json");
    let mut args = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
    if !extra.contains(&"--models") {
        args.extend(["--models".into(), tiny_dir().display().to_string()]);
    }
    if !extra.iter().any(|a| a.starts_with("--warmup")) {
        args.extend(["--warmup-layout".into(), layout.display().to_string()]);
    }
    args
}

/// Spawns commands from one thread that lives as long as the test process, so that the
/// parent-death signal fires when the process ends, not when a test's thread does.
fn spawn(mut command: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
            // Keep the thread alive: it is the children's parent thread.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    sender.lock().unwrap().send((command, tx)).unwrap();
    rx.recv().unwrap().expect("spawning idpatch serve")
}

impl Server {
    /// Starts `idpatch serve` with the base arguments plus `extra`, and waits until it listens.
    pub fn start(extra: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idpatch"));
        command
            .args(base_args(extra))
            .args(extra)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn(command);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["event"] == "listening" {
                        let _ = tx.send(v["address"].as_str().unwrap().to_string());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not listen; its log: {:?}",
                    log.lock().unwrap()
                )
            });
        Server {
            base: format!("http://{address}"),
            pid: child.id(),
            child: Mutex::new(child),
            log,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let started = Instant::now();
        while get(self, "/readyz").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "not ready after 300 s; log: {:?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.pid);
    }

    /// Waits for the process to exit (at most `timeout`) and returns its exit code.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < timeout,
                "the server did not exit; its log: {:?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log lines that are JSON objects with `"event": event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }
}

/// The server every test without special settings shares, started (and warmed up) once.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = Server::start(&[]);
        server.wait_ready();
        server
    })
}

/// An HTTP client that returns error statuses as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// A response: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The error body's (message, field).
    pub fn error(&self) -> (String, Option<String>) {
        let v = self.json();
        let message = v["error"]["message"].as_str().unwrap_or_else(|| {
            panic!("not an error body: {v}");
        });
        (
            message.to_string(),
            v["error"]["field"].as_str().map(str::to_string),
        )
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("HTTP exchange");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET `path`: (status, body).
pub fn get(server: &Server, path: &str) -> (u16, String) {
    let r = reply(agent().get(server.url(path)).call());
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// POST a body to /v1/generations with extra headers (`content-type: application/json` unless
/// they give one).
pub fn post_with(server: &Server, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().post(server.url("/v1/generations"));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    reply(request.send(body))
}

/// POST a JSON value to /v1/generations.
pub fn post(server: &Server, body: &serde_json::Value) -> Reply {
    post_with(server, body.to_string().as_bytes(), &[])
}

/// DELETE /v1/generations/{id}.
pub fn delete(server: &Server, id: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().delete(server.url(&format!("/v1/generations/{id}")));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    reply(request.call())
}

/// An open Server-Sent Events stream.
pub struct EventStream {
    pub status: u16,
    reader: BufReader<Box<dyn Read + Send>>,
}

impl EventStream {
    /// POSTs `body` (which should have `"stream": true`) and opens the stream.
    pub fn open(server: &Server, body: &serde_json::Value, headers: &[(&str, &str)]) -> Self {
        let mut request = agent()
            .post(server.url("/v1/generations"))
            .header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send(body.to_string().as_bytes()).unwrap();
        let status = response.status().as_u16();
        let reader: Box<dyn Read + Send> = Box::new(response.into_body().into_reader());
        EventStream {
            status,
            reader: BufReader::new(reader),
        }
    }

    /// The next event (name, data), skipping keep-alive comments; `None` at the end.
    pub fn next(&mut self) -> Option<(String, serde_json::Value)> {
        let (mut name, mut data) = (None, String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if let Some(name) = name.take() {
                    return Some((name, serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }

    /// Reads events until one named `name`; panics at the end of the stream.
    pub fn until(&mut self, name: &str) -> serde_json::Value {
        loop {
            match self.next() {
                Some((n, data)) if n == name => return data,
                Some(_) => continue,
                None => panic!("the stream ended before a `{name}` event"),
            }
        }
    }
}

/// A metric's value from `/metrics` (the first sample whose line starts with `prefix`).
pub fn metric(server: &Server, prefix: &str) -> f64 {
    let (status, text) = get(server, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The bundled example's face photos, as files.
pub fn example_faces() -> Vec<PathBuf> {
    ["face_chelsea.png", "face_astronaut.png", "face_coffee.png"]
        .iter()
        .map(|f| tiny_dir().join("examples").join(f))
        .collect()
}

/// Standard base64, as requests carry images.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bundled example layout (192x128, 3 people) as a request, faces inlined as base64.
pub fn example_request(steps: usize, seed: u64) -> serde_json::Value {
    let layout: serde_json::Value =
        crate::common::read_json(&tiny_dir().join("examples/layout.json"));
    let people: Vec<serde_json::Value> = layout["people"]
        .as_array()
        .unwrap()
        .iter()
        .zip(example_faces())
        .map(|(p, face)| {
            let mut p = p.clone();
            p["face"] = serde_json::json!(b64(&std::fs::read(face).unwrap()));
            p
        })
        .collect();
    serde_json::json!({
        "prompt": "three friends in a park",
        "width": layout["width"], "height": layout["height"],
        "num_inference_steps": steps, "seed": seed, "people": people,
    })
}

/// Runs `idpatch serve` on the tiny set with `flags`, expecting it to refuse them: exit status 2
/// and a one-line error, returned. Nothing listens long (port 0; the checks come first).
pub fn serve_refuses(flags: &[&str]) -> String {
    let tiny = tiny_dir();
    let mut args = vec![
        "serve",
        "--models",
        tiny.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    let (code, _, stderr) = crate::common::run(&args);
    assert_eq!(code, 2, "{flags:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: {stderr}");
    stderr
}
