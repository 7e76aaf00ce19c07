//! `idpatch serve` on loopback with the tiny set, through a real HTTP client: every endpoint,
//! every error status, Server-Sent Events, cancellation (disconnect and DELETE), 429 under
//! overload, 504 past the deadline, drain on SIGTERM, the hostile-input sweep, the README's
//! client examples, the deploy manifests, and the image byte for byte equal to `idpatch
//! generate`'s for the same request and seed.
//!
//! Requests use the bundled example (192x128, 3 people, guidance 5.5), the shapes every test
//! server warms up on, and few steps (about 40 ms each).

#![cfg(all(feature = "serve", feature = "tract"))]

mod common;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use server::{delete, get, metric, post, post_with, shared, EventStream, Server};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bundled example layout as a request: faces inlined as base64.
/// Steps of a job that runs long enough to be cancelled, queued behind or drained: the shared
/// server's most (`--max-steps` default), a few seconds on the tiny set.
const LONG_STEPS: usize = 150;

fn example_request(steps: usize, seed: u64) -> Value {
    let layout: Value = common::read_json(&common::tiny_dir().join("examples/layout.json"));
    let people: Vec<Value> = layout["people"]
        .as_array()
        .unwrap()
        .iter()
        .zip(server::example_faces())
        .map(|(p, face)| {
            let mut p = p.clone();
            p["face"] = json!(b64(&std::fs::read(face).unwrap()));
            p
        })
        .collect();
    json!({
        "prompt": "three friends in a park",
        "width": layout["width"], "height": layout["height"],
        "num_inference_steps": steps, "seed": seed, "people": people,
    })
}

fn png_text(png: &[u8]) -> std::collections::BTreeMap<String, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), png).unwrap();
    idpatch::image_io::read_png_text(file.path())
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn health_readiness_metrics_and_openapi() {
    let s = shared();
    assert_eq!(get(s, "/healthz"), (200, r#"{"status":"alive"}"#.into()));
    assert_eq!(get(s, "/readyz"), (200, r#"{"status":"ready"}"#.into()));
    let (status, metrics) = get(s, "/metrics");
    assert_eq!(status, 200);
    for name in [
        "idpatch_requests_total",
        "idpatch_queue_depth",
        "idpatch_in_flight",
        "idpatch_workers_ready 1",
        "idpatch_stage_seconds_bucket",
        "idpatch_denoising_steps_per_second",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (status, doc) = get(s, "/openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/generations",
        "/v1/generations/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let request = &doc["components"]["schemas"]["GenerationRequest"];
    for field in [
        "prompt",
        "num_inference_steps",
        "guidance_scale",
        "people",
        "stream",
    ] {
        assert!(request["properties"][field].is_object(), "{field} missing");
    }
    let (status, body) = get(s, "/nothing-here");
    assert_eq!(status, 404, "{body}");
    let r = server::delete(s, "no-such-id", &[]);
    assert_eq!((r.status, r.error().1.as_deref()), (404, Some("id")));
    let r = server::agent()
        .get(s.url("/v1/generations"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[test]
fn png_is_identical_to_idpatch_generate() {
    let s = shared();
    let r = post(s, &example_request(3, 7));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert!(r.header("x-generation-id").unwrap().starts_with("gen-"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli.png");
    let layout = common::tiny_dir().join("examples/layout.json");
    let (code, _, err) = common::run(&[
        "generate",
        "--models",
        common::tiny_dir().to_str().unwrap(),
        "--layout",
        layout.to_str().unwrap(),
        "--prompt",
        "three friends in a park",
        "--steps",
        "3",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cli = std::fs::read(&out).unwrap();
    // Same pixels and the same text chunks, so the same file.
    assert_eq!(png_text(&r.body), png_text(&cli));
    assert!(
        r.body == cli,
        "the server's PNG differs from idpatch generate's"
    );

    // b64_json: the same PNG, its chunks as `parameters`, and per-stage timings.
    let mut request = example_request(3, 7);
    request["response_format"] = json!("b64_json");
    let r = post(s, &request);
    assert_eq!(r.status, 200);
    let v = r.json();
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["image"].as_str().unwrap())
        .unwrap();
    assert!(png == cli);
    assert_eq!(v["parameters"]["seed"], "7");
    assert_eq!(v["parameters"]["steps"], "3");
    for stage in ["prepare", "queue", "unet", "vae_decode", "png", "total"] {
        assert!(v["timings"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
}

/// People given as plain photos without `face_keypoints` (one group photo for two of them,
/// `face_index` choosing the face): the server detects the faces as `idpatch generate` does, and
/// the image is the CLI's, byte for byte. A `face_index` past the faces found names the person.
#[test]
fn faces_are_detected_in_photos_as_idpatch_generate_detects_them() {
    let s = shared();
    let examples = common::tiny_dir().join("examples");
    let layout_path = examples.join("layout_photos.json");
    let layout: Value = common::read_json(&layout_path);
    let people: Vec<Value> = layout["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let photo = examples.join(p["face"].as_str().unwrap());
            p["face"] = json!(b64(&std::fs::read(photo).unwrap()));
            p
        })
        .collect();
    let mut request = json!({
        "prompt": "three friends in a park",
        "width": layout["width"], "height": layout["height"],
        "num_inference_steps": 2, "seed": 5, "people": people,
    });
    let r = post(s, &request);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli.png");
    let (code, _, err) = common::run(&[
        "generate",
        "--models",
        common::tiny_dir().to_str().unwrap(),
        "--layout",
        layout_path.to_str().unwrap(),
        "--prompt",
        "three friends in a park",
        "--steps",
        "2",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        r.body == std::fs::read(&out).unwrap(),
        "the server's PNG differs from idpatch generate's"
    );

    request["people"][2]["face_index"] = json!(7);
    let r = post(s, &request);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let (message, field) = r.error();
    assert_eq!(field.as_deref(), Some("people[2].face"), "{message}");
    assert!(message.contains("face_index 7"), "{message}");
}

/// A multipart body: the `request` JSON part, then one `face` file part per photo.
fn multipart(request: &Value, faces: &[Vec<u8>]) -> (String, Vec<u8>) {
    let boundary = "idpatch-test-boundary-7d3f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\
             Content-Type: application/json\r\n\r\n{request}\r\n"
        )
        .as_bytes(),
    );
    for (i, face) in faces.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"face\"; \
                 filename=\"face{i}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(face);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn multipart_faces_give_the_same_image_as_base64() {
    let s = shared();
    let json_reply = post(s, &example_request(2, 3));
    assert_eq!(json_reply.status, 200);
    let mut request = example_request(2, 3);
    for p in request["people"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("face");
    }
    let faces: Vec<Vec<u8>> = server::example_faces()
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let send = |faces: &[Vec<u8>]| {
        let (content_type, body) = multipart(&request, faces);
        let r = server::agent()
            .post(s.url("/v1/generations"))
            .header("content-type", &content_type)
            .send(&body[..])
            .unwrap();
        let status = r.status().as_u16();
        (status, r.into_body().read_to_vec().unwrap())
    };
    let (status, body) = send(&faces);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == json_reply.body);
    // One face file short: 400 naming the parts.
    let (status, body) = send(&faces[..2]);
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["field"], "face");
}

#[test]
fn stream_reports_queue_position_every_step_and_the_image() {
    let s = shared();
    let mut request = example_request(4, 11);
    request["stream"] = json!(true);
    let mut events = EventStream::open(s, &request, &[]);
    assert_eq!(events.status, 200);
    let mut names = Vec::new();
    let mut steps = Vec::new();
    let image = loop {
        let (name, data) = events.next().expect("the stream ended early");
        match name.as_str() {
            "queued" => assert!(data["position"].as_u64().is_some()),
            "step" => {
                assert_eq!(data["steps"], 4);
                steps.push(data["step"].as_u64().unwrap());
            }
            "image" => break data,
            "error" => panic!("error event: {data}"),
            _ => {}
        }
        names.push(name);
    };
    assert_eq!(names.first().map(String::as_str), Some("queued"));
    assert!(names.contains(&"started".to_string()));
    assert_eq!(steps, [1, 2, 3, 4]);
    let png = base64::engine::general_purpose::STANDARD
        .decode(image["image"].as_str().unwrap())
        .unwrap();
    assert_eq!(png_text(&png)["seed"], "11");
    assert!(
        events.next().is_none(),
        "the stream goes on after the image"
    );
}

/// Waits until `metric` reaches at least `value`.
fn wait_metric(s: &Server, name: &str, value: f64) {
    let started = std::time::Instant::now();
    while metric(s, name) < value {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} stayed below {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_disconnects_cancels_its_job_between_steps() {
    let s = shared();
    let mut request = example_request(LONG_STEPS, 1);
    request["stream"] = json!(true);
    let mut events = EventStream::open(s, &request, &[]);
    let id = events.until("started")["id"].as_str().unwrap().to_string();
    events.until("step");
    drop(events);
    // The job stops after its current step, not after all of them.
    let started = std::time::Instant::now();
    loop {
        let gone = s
            .events("client_gone")
            .iter()
            .any(|e| e["id"] == id.as_str());
        let logged = s.events("request").iter().any(|e| e["id"] == id.as_str());
        if gone && logged {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = s
        .events("request")
        .into_iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap();
    assert_eq!(line["status"], 499);
    assert!(line["seconds"].as_f64().unwrap() < 20.0 * 60.0);
    // The worker is free again: DELETE finds nothing, and a new job runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while delete(s, &id, &[]).status != 404 {
        assert!(std::time::Instant::now() < deadline, "job {id} still live");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(s, &example_request(1, 0)).status, 200);
}

#[test]
fn delete_cancels_a_running_job() {
    let s = shared();
    let mut request = example_request(LONG_STEPS, 2);
    request["stream"] = json!(true);
    let id = "delete-me-1";
    let mut events = EventStream::open(s, &request, &[("x-generation-id", id)]);
    assert_eq!(events.until("queued")["id"], id);
    events.until("step");
    // The id is taken while the job lives.
    let r = post_with(
        s,
        example_request(1, 0).to_string().as_bytes(),
        &[("x-generation-id", id)],
    );
    assert_eq!(
        (r.status, r.error().1.as_deref()),
        (409, Some("x-generation-id"))
    );
    let r = delete(s, id, &[]);
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["status"], "cancelling");
    let error = events.until("error");
    assert_eq!(error["status"], 409);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cancelled after denoising step"),
        "{message}"
    );
    assert!(events.next().is_none());
}

/// A PNG whose header declares `width` x `height` grey pixels, with a tiny (truncated) image
/// stream: what a decompression bomb looks like before its pixels are inflated.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A zlib bomb: a real 8200 x 8200 grey PNG of zeros (67 M pixels, over the 64 Mi limit), a
/// few hundred KB compressed.
fn png_bomb() -> Vec<u8> {
    let (w, h) = (8200u32, 8200u32);
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        let row = vec![0u8; w as usize];
        for _ in 0..h {
            std::io::Write::write_all(&mut stream, &row).unwrap();
        }
        stream.finish().unwrap();
    }
    out
}

/// Every hostile or invalid request gets its status and names its field; nothing is lost and
/// the server answers afterwards.
#[test]
fn hostile_and_invalid_requests_get_400_413_415_naming_the_field() {
    let s = shared();
    let good = example_request(1, 0);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let face_112 = {
        let img = idpatch::image_io::Rgb8::zeros(112, 113);
        idpatch::image_io::encode_png(&img, &[]).unwrap()
    };
    let text = good.to_string();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "truncated JSON",
            text.as_bytes()[..text.len() / 2].to_vec(),
            400,
            None,
        ),
        ("not JSON", b"prompt=hello".to_vec(), 400, None),
        (
            "trailing data",
            format!("{text} {{}}").into_bytes(),
            400,
            None,
        ),
        ("array", b"[1, 2]".to_vec(), 400, None),
        (
            "wrong type",
            with(&|v| v["num_inference_steps"] = json!("ten")),
            400,
            Some("num_inference_steps"),
        ),
        (
            "huge integer",
            with(&|v| v["seed"] = json!(1e300)),
            400,
            Some("seed"),
        ),
        (
            "huge steps",
            br#"{"num_inference_steps": 99999999999999999999999}"#.to_vec(),
            400,
            Some("num_inference_steps"),
        ),
        (
            "steps 0",
            with(&|v| v["num_inference_steps"] = json!(0)),
            400,
            Some("num_inference_steps"),
        ),
        (
            "steps over the limit",
            with(&|v| v["num_inference_steps"] = json!(151)),
            400,
            Some("num_inference_steps"),
        ),
        (
            "guidance inf as f32",
            with(&|v| v["guidance_scale"] = json!(1e39)),
            400,
            Some("guidance_scale"),
        ),
        (
            "width not /32",
            with(&|v| v["width"] = json!(200)),
            400,
            Some("width"),
        ),
        (
            "width over the limit",
            with(&|v| v["width"] = json!(4096)),
            400,
            Some("width"),
        ),
        (
            "negative height",
            with(&|v| v["height"] = json!(-128)),
            400,
            Some("height"),
        ),
        ("unknown field", with(&|v| v["cfg"] = json!(5)), 400, None),
        (
            "unknown person field",
            with(&|v| v["people"][0]["name"] = json!("x")),
            400,
            Some("people[0]"),
        ),
        (
            "missing prompt",
            with(&|v| {
                v.as_object_mut().unwrap().remove("prompt");
            }),
            400,
            None,
        ),
        (
            "unknown scheduler",
            with(&|v| v["scheduler"] = json!("lms")),
            400,
            Some("scheduler"),
        ),
        (
            "window reversed",
            with(&|v| {
                v["control_guidance_start"] = json!(0.9);
                v["control_guidance_end"] = json!(0.1);
            }),
            400,
            Some("control_guidance_start"),
        ),
        (
            "no people",
            with(&|v| v["people"] = json!([])),
            400,
            Some("people"),
        ),
        (
            "9 people",
            with(&|v| v["people"] = json!(vec![v["people"][0].clone(); 9])),
            400,
            Some("people"),
        ),
        (
            "10,000 people",
            with(&|v| v["people"] = json!(vec![json!({"position": [1, 1]}); 10_000])),
            400,
            Some("people"),
        ),
        (
            "bad base64",
            with(&|v| v["people"][1]["face"] = json!("not*base64!")),
            400,
            Some("people[1].face"),
        ),
        (
            "not an image",
            with(&|v| v["people"][0]["face"] = json!(b64(b"GIF89a....."))),
            400,
            Some("people[0].face"),
        ),
        (
            "damaged PNG",
            with(&|v| v["people"][0]["face"] = json!(b64(&face_112[..face_112.len() - 20]))),
            400,
            Some("people[0].face"),
        ),
        (
            "declared 100000x100000",
            with(&|v| v["people"][0]["face"] = json!(b64(&png_declaring(100_000, 100_000)))),
            400,
            Some("people[0].face"),
        ),
        (
            "zlib bomb",
            with(&|v| v["people"][0]["face"] = json!(b64(&png_bomb()))),
            400,
            Some("people[0].face"),
        ),
        (
            "no face found (a black 112x113 photo, no face points)",
            with(&|v| v["people"][0]["face"] = json!(b64(&face_112))),
            400,
            Some("people[0].face"),
        ),
        (
            "position far outside",
            with(&|v| v["people"][0]["position"] = json!([1e9, 0])),
            400,
            Some("people[0].position"),
        ),
        (
            "both placements",
            with(&|v| v["people"][0]["keypoints"] = v["people"][1]["keypoints"].clone()),
            400,
            Some("people[0]"),
        ),
        (
            "prompt over 10,000 bytes",
            with(&|v| v["prompt"] = json!("a".repeat(10_001))),
            400,
            Some("prompt"),
        ),
        (
            "negative prompt without guidance",
            with(&|v| {
                v["guidance_scale"] = json!(1.0);
                v["negative_prompt"] = json!("x");
            }),
            400,
            Some("negative_prompt"),
        ),
    ];
    for (what, body, status, field) in &cases {
        let r = post_with(s, body, &[]);
        assert_eq!(
            r.status,
            *status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (message, got) = r.error();
        assert_eq!(got.as_deref(), *field, "{what}: {message}");
        assert!(!message.contains('\n'), "{what}: {message}");
    }
    // 100 MB of base64: refused from the length, before it is read.
    let huge = format!(
        r#"{{"prompt": "x", "people": [{{"face": "{}"}}]}}"#,
        "A".repeat(100 << 20)
    );
    match server::agent()
        .post(s.url("/v1/generations"))
        .header("content-type", "application/json")
        .send(huge.as_bytes())
    {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        // The server may answer 413 and close while the client is still sending.
        Err(e) => assert!(matches!(e, ureq::Error::Io(_)), "{e}"),
    }
    let r = post_with(s, &[0u8; 100], &[]);
    assert_eq!(r.status, 400);
    let r = server::agent()
        .post(s.url("/v1/generations"))
        .header("content-type", "text/plain")
        .send("hello")
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // Still answering, nothing stuck.
    assert_eq!(post(s, &good).status, 200);
    assert_eq!(metric(s, "idpatch_queue_depth"), 0.0);
}

#[test]
fn api_key_overload_and_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret-key\n").unwrap();
    let s = Server::start(&[
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--queue-capacity",
        "1",
        "--request-timeout",
        "2",
    ]);
    s.wait_ready();
    let auth = [("authorization", "Bearer s3cret-key")];
    let body = example_request(1, 0).to_string();
    let r = post_with(&s, body.as_bytes(), &[]);
    assert_eq!(
        (r.status, r.error().1.as_deref()),
        (401, Some("authorization"))
    );
    let r = post_with(
        &s,
        body.as_bytes(),
        &[("authorization", "Bearer s3cret-kez")],
    );
    assert_eq!(r.status, 401);
    assert_eq!(delete(&s, "x", &[]).status, 401);
    assert_eq!(get(&s, "/healthz").0, 200);

    // A long job runs; one more waits (the queue's one place); the next is refused with 429.
    let mut long = example_request(LONG_STEPS, 0);
    long["stream"] = json!(true);
    let mut events = EventStream::open(&s, &long, &auth);
    let id = events.until("started")["id"].as_str().unwrap().to_string();
    let waiting = {
        let s_base = s.base.clone();
        let body = body.clone();
        std::thread::spawn(move || {
            let r = server::agent()
                .post(format!("{s_base}/v1/generations"))
                .header("content-type", "application/json")
                .header("authorization", "Bearer s3cret-key")
                .send(body.as_bytes())
                .unwrap();
            let status = r.status().as_u16();
            (status, r.into_body().read_to_string().unwrap())
        })
    };
    wait_metric(&s, "idpatch_queue_depth", 1.0);
    let r = post_with(&s, body.as_bytes(), &auth);
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    // The waiting job passes its 2 s deadline behind the long one: 504, and it never ran.
    let (status, text) = waiting.join().unwrap();
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("did not run"), "{text}");
    assert_eq!(
        metric(&s, "idpatch_rejected_total{reason=\"deadline\"}"),
        1.0
    );
    assert_eq!(
        metric(&s, "idpatch_rejected_total{reason=\"queue_full\"}"),
        1.0
    );
    assert_eq!(delete(&s, &id, &auth).status, 202);
    assert_eq!(events.until("error")["status"], 409);
}

#[test]
fn sigterm_drains_queued_and_running_jobs_then_exits_0() {
    let s = Server::start(&[]);
    // Listening but still warming up: alive, not ready, no work taken.
    assert_eq!(get(&s, "/healthz").0, 200);
    let (status, body) = get(&s, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(post(&s, &example_request(1, 0)).status, 503);
    s.wait_ready();

    let mut running = example_request(25, 5);
    running["stream"] = json!(true);
    let mut events = EventStream::open(&s, &running, &[]);
    events.until("started");
    let queued = {
        let s_base = s.base.clone();
        let body = example_request(2, 6).to_string();
        std::thread::spawn(move || {
            let r = server::agent()
                .post(format!("{s_base}/v1/generations"))
                .header("content-type", "application/json")
                .send(body.as_bytes())
                .unwrap();
            let status = r.status().as_u16();
            (status, r.into_body().read_to_vec().unwrap())
        })
    };
    wait_metric(&s, "idpatch_queue_depth", 1.0);
    s.terminate();
    let started = std::time::Instant::now();
    while get(&s, "/readyz").0 != 503 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "readyz stayed 200"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(&s, &example_request(1, 0));
    assert_eq!(r.status, 503);
    assert!(r.error().0.contains("draining"));
    // Both jobs finish.
    let image = events.until("image");
    assert!(image["image"].as_str().unwrap().len() > 100);
    let (status, png) = queued.join().unwrap();
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG"));
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(s.events("draining").len(), 1);
    assert_eq!(s.events("stopped").len(), 1);
    // One log line per generation request, with id, status, queue wait and stage times.
    let lines: Vec<Value> = s
        .events("request")
        .into_iter()
        .filter(|e| e["route"] == "/v1/generations" && e["status"] == 200)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        assert!(line["id"].as_str().unwrap().starts_with("gen-"));
        assert!(line["queue_wait"].as_f64().is_some());
        assert!(line["timings"]["unet"].as_f64().is_some());
    }
}

/// The README's shell block between `<!-- serve-example -->` markers, run with curl and the
/// Python `requests` example against the shared server.
#[test]
fn readme_client_examples_run() {
    let python = std::env::var("IDPATCH_SERVE_PYTHON").unwrap_or_else(|_| {
        panic!("IDPATCH_SERVE_PYTHON is not set: run scripts/test.sh, or export IDPATCH_SERVE_PYTHON=$(scripts/pyserve.sh)")
    });
    let s = shared();
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let block = |lang: &str| {
        let marker = format!("<!-- serve-example {lang} -->\n```{lang}\n");
        let start = readme
            .find(&marker)
            .unwrap_or_else(|| panic!("{marker} missing"))
            + marker.len();
        let end = start + readme[start..].find("```").unwrap();
        readme[start..end].replace("http://127.0.0.1:8080", &s.base)
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(common::root())
            .env("OUT_DIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("bash", &["-euo", "pipefail", "-c", &block("sh")]);
    run(&python, &["-c", &block("python")]);
    for name in ["curl.png", "curl-multipart.png", "requests.png"] {
        let png = std::fs::read(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            png_text(&png)["prompt"],
            "three friends in a park",
            "{name}"
        );
    }
}

/// deploy/k8s validates against Kubernetes' schemas (kubernetes-validate, strict), and the
/// validator does reject a broken manifest.
#[test]
fn deploy_manifests_validate() {
    let python = std::env::var("IDPATCH_SERVE_PYTHON").unwrap_or_else(|_| {
        panic!("IDPATCH_SERVE_PYTHON is not set: run scripts/test.sh, or export IDPATCH_SERVE_PYTHON=$(scripts/pyserve.sh)")
    });
    let validate = |files: &[std::path::PathBuf]| {
        std::process::Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(files)
            .output()
            .unwrap()
    };
    let dir = common::root().join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    let out = validate(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let broken = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let text = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    std::fs::write(
        broken.path(),
        text.replace("containerPort: 8080", "containerPort: eighty"),
    )
    .unwrap();
    assert!(!validate(&[broken.path().to_path_buf()]).status.success());
}
