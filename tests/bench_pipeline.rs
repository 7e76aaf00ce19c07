//! `idpatch bench --pipeline`: how per-run timings are summarised (against numpy, from
//! tests/reference/bench_pipeline.py), and on the tiny set with tract the per-stage JSON and its
//! usage errors.

mod common;

use std::time::Duration;

#[cfg(feature = "tract")]
use common::{bench, tiny_dir};
use idpatch::bench::{PipelineStats, PIPELINE_STAGES};
use idpatch::pipeline::Timings;

/// One run's [`Timings`] from the reference's integer nanoseconds.
fn timings(run: &serde_json::Value) -> Timings {
    let get = |name: &str| {
        Duration::from_nanos(
            run[name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {name} in {run}")),
        )
    };
    Timings {
        faces: get("faces"),
        tokenize: get("tokenize"),
        load_graphs: get("load_graphs"),
        text_encoders: get("text_encoders"),
        id_graphs: get("id_graphs"),
        condition: get("condition"),
        controlnet: get("controlnet"),
        unet: get("unet"),
        first_runs: get("first_runs"),
        scheduler: get("scheduler"),
        vae_decode: get("vae_decode"),
        to_rgb: get("to_rgb"),
        controlnet_call: Some(get("controlnet_call")),
        controlnet_calls: run["controlnet_calls"].as_u64().unwrap() as usize,
        controlnet_skipped: run["controlnet_skipped"].as_u64().unwrap() as usize,
    }
}

fn assert_close(got: f64, want: &serde_json::Value, what: &str) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{what}: {want}"));
    assert!(
        (got - want).abs() <= 1e-9 * want.abs(),
        "{what}: {got} vs numpy {want}"
    );
}

// Expected values: numpy.median / numpy.percentile(90) over made-up runs, the total of a run being
// the sum of its ten stages (tests/reference/bench_pipeline.py, tests/data/bench/pipeline_stats.json).
// The cases are chosen so that the median total differs from the sum of the stage medians.
#[test]
fn stage_total_and_share_statistics_match_numpy() {
    let path = common::test_data("bench").join("pipeline_stats.json");
    let reference: serde_json::Value = common::read_json(&path);
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let runs: Vec<Timings> = case["runs_ns"]
            .as_array()
            .unwrap()
            .iter()
            .map(timings)
            .collect();
        let n = runs.len();
        let load_graphs = Duration::from_millis(250);
        let stats = PipelineStats::from_runs(&runs, load_graphs).unwrap();
        let names: Vec<&str> = stats.stages.iter().map(|(name, _)| *name).collect();
        let mut want_names: Vec<&str> = case["stages"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        want_names.sort_unstable();
        assert_eq!(names.len(), PIPELINE_STAGES.len());
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want_names, "stage names ({n} runs)");
        for (name, s) in &stats.stages {
            let want = &case["stages"][*name];
            assert_close(
                s.median_ms,
                &want["median_ms"],
                &format!("{name} median, {n} runs"),
            );
            assert_close(s.p90_ms, &want["p90_ms"], &format!("{name} p90, {n} runs"));
            assert_eq!(s.runs, n);
        }
        let saved = stats.controlnet_saved.as_ref().unwrap();
        for (what, s) in [
            ("total", &stats.total),
            ("rust_owned", &stats.rust_owned),
            ("first_runs", &stats.first_runs),
            ("controlnet_saved", saved),
        ] {
            assert_close(
                s.median_ms,
                &case[what]["median_ms"],
                &format!("{what} median, {n} runs"),
            );
            assert_close(
                s.p90_ms,
                &case[what]["p90_ms"],
                &format!("{what} p90, {n} runs"),
            );
        }
        assert_close(
            stats.rust_owned_share(),
            &case["rust_owned_share"],
            &format!("Rust-owned share, {n} runs"),
        );
        assert_eq!(stats.load_graphs_ms, 250.0);
        assert_eq!(
            (stats.controlnet_calls, stats.controlnet_skipped),
            (
                case["controlnet_calls"].as_u64().unwrap() as usize,
                case["controlnet_skipped"].as_u64().unwrap() as usize
            )
        );
    }
    assert!(PipelineStats::from_runs(&[], Duration::ZERO).is_none());
}

// The JSON's shape; the statistics themselves are checked against numpy above.
#[cfg(feature = "tract")]
#[test]
fn json_has_every_stage_and_the_summary() {
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
    // Parameters under diffusers' names; the defaults are ID-Patch's.
    assert_eq!(v["num_inference_steps"], 2);
    assert_eq!(v["guidance_scale"], 5.5);
    assert_eq!(v["controlnet_conditioning_scale"], 0.8);
    assert_eq!(v["runs"], 1);
    assert_eq!(v["people"], 3);
    assert_eq!(v["layout"], "synth");
    assert_eq!(v["size"], serde_json::json!({"height": 64, "width": 96}));
    let stages = v["stages"].as_object().unwrap();
    let mut names: Vec<&str> = stages.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = PIPELINE_STAGES.iter().map(|(name, _)| *name).collect();
    want.sort_unstable();
    assert_eq!(names, want, "{v}");
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
    assert!(v["total"]["median_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["load_graphs_ms"].as_f64().unwrap() > 0.0, "{v}");
    let share = v["rust_owned_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
}

#[cfg(feature = "tract")]
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

#[cfg(feature = "tract")]
#[test]
fn bad_combinations_exit_2_with_one_line() {
    let layout = tiny_dir().join("examples/layout.json");
    let cases: [(&[&str], &str); 12] = [
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
        // diffusers' spellings are named as typed.
        (&["--num-inference-steps", "2"], "--num-inference-steps"),
        (&["--guidance-scale", "2"], "--guidance-scale"),
        (
            &["--controlnet-conditioning-scale", "0.5"],
            "--controlnet-conditioning-scale",
        ),
        (
            &["--pipeline", "--num-inference-steps", "0"],
            "--num-inference-steps",
        ),
        (
            &["--pipeline", "--guidance-scale", "101"],
            "--guidance-scale",
        ),
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

// diffusers' parameter names reach the pipeline as the short ones do, and both spellings of
// one setting together are a usage error.
#[cfg(feature = "tract")]
#[test]
fn diffusers_names_set_the_same_parameters() {
    let (code, stdout, stderr) = bench(&[
        "--pipeline",
        "--height",
        "64",
        "--width",
        "64",
        "--people",
        "1",
        "--num-inference-steps",
        "1",
        "--guidance-scale",
        "1",
        "--controlnet-conditioning-scale",
        "0.5",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["num_inference_steps"], 1);
    assert_eq!(v["guidance_scale"], 1.0);
    assert_eq!(v["batch"], 1);
    assert_eq!(v["controlnet_conditioning_scale"], 0.5);

    let (code, _, stderr) = bench(&["--pipeline", "--steps", "2", "--num-inference-steps", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
