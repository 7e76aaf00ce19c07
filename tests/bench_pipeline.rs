//! `idpatch bench --pipeline` on the tiny set with tract: the per-stage JSON and its usage errors.

#![cfg(feature = "tract")]

mod common;

use common::{bench, tiny_dir};

const STAGES: [&str; 10] = [
    "faces",
    "tokenize",
    "text_encoders",
    "id_graphs",
    "condition",
    "controlnet",
    "unet",
    "scheduler",
    "vae_decode",
    "to_rgb",
];

#[test]
fn json_has_every_stage_and_a_total_that_is_their_sum() {
    let (code, stdout, stderr) = bench(&[
        "--pipeline",
        "--height",
        "64",
        "--width",
        "96",
        "--people",
        "3",
        "--steps",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["steps"], 2);
    assert_eq!(v["people"], 3);
    assert_eq!(v["layout"], "synth");
    assert_eq!(v["size"], serde_json::json!({"height": 64, "width": 96}));
    let stages = v["stages"].as_object().unwrap();
    assert_eq!(stages.len(), STAGES.len(), "{v}");
    let mut sum = 0.0;
    for name in STAGES {
        let stage = &stages[name];
        let (median, p90) = (
            stage["median_ms"].as_f64().unwrap(),
            stage["p90_ms"].as_f64().unwrap(),
        );
        assert!(median >= 0.0 && p90 == median, "{name}: {stage}");
        sum += median;
    }
    // Graph stages take real time on every backend.
    for name in [
        "text_encoders",
        "id_graphs",
        "controlnet",
        "unet",
        "vae_decode",
    ] {
        assert!(stages[name]["median_ms"].as_f64().unwrap() > 0.0, "{name}");
    }
    let total = v["total"]["median_ms"].as_f64().unwrap();
    assert!(
        (total - sum).abs() <= 1e-6 * total.max(1.0),
        "{total} vs {sum}"
    );
    let share = v["rust_owned_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
}

#[test]
fn a_given_layout_is_timed_with_its_people() {
    let layout = tiny_dir().join("examples/layout.json");
    let (code, stdout, stderr) = bench(&[
        "--pipeline",
        "--layout",
        layout.to_str().unwrap(),
        "--steps",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // models/tiny/examples/layout.json: 192x128, three people.
    assert_eq!(v["people"], 3);
    assert_eq!(v["size"], serde_json::json!({"height": 128, "width": 192}));
    assert!(v["stages"]["faces"]["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_combinations_exit_2_with_one_line() {
    let layout = tiny_dir().join("examples/layout.json");
    let cases: [(&[&str], &str); 7] = [
        (&["--pipeline", "--graphs", "unet"], "--graphs"),
        (&["--pipeline", "--sequence", "109"], "--sequence"),
        (
            &[
                "--pipeline",
                "--layout",
                layout.to_str().unwrap(),
                "--people",
                "2",
            ],
            "--layout",
        ),
        (&["--steps", "2"], "--steps"),
        (&["--pipeline", "--steps", "0"], "--steps"),
        // Sides the set cannot generate name the flag, not the made-up layout's field.
        (&["--pipeline", "--height", "100"], "--height"),
        (&["--pipeline", "--width", "72"], "--width"),
    ];
    for (args, flag) in cases {
        let (code, stdout, stderr) = bench(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
