//! `idpatch bench` on the tiny set with tract: the JSON it prints and its input errors.

#![cfg(feature = "tract")]

mod common;

use common::bench;

#[test]
fn json_has_one_object_per_graph_with_timings_and_shapes() {
    let (code, stdout, stderr) = bench(&["--graphs", "patch_proj", "--runs", "3", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["graph"], "patch_proj");
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["ep"], "cpu");
    assert_eq!(v["precision"], "fp32");
    assert_eq!(v["inputs"], "golden");
    assert_eq!(v["runs"], 3);
    assert_eq!(v["warmup"], 3);
    let (median, p90) = (
        v["median_ms"].as_f64().unwrap(),
        v["p90_ms"].as_f64().unwrap(),
    );
    assert!(median > 0.0 && p90 >= median, "{v}");
    // The golden input of the tiny set: models/tiny/golden/patch_proj/input.id_embeds.npy, 3 faces.
    assert_eq!(v["shapes"]["id_embeds"], serde_json::json!([3, 1, 512]));
}

#[test]
fn made_up_inputs_follow_the_requested_size() {
    let (code, stdout, stderr) = bench(&[
        "--graphs",
        "controlnet,prompt_proj",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--height",
        "256",
        "--width",
        "192",
        "--people",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines = common::json_lines(&stdout);
    assert_eq!(lines.len(), 2);
    let cn = &lines[0]["shapes"];
    assert_eq!(lines[0]["inputs"], "synth");
    // models/tiny/manifest.json: vae_scale_factor 8 (256x192 px -> 32x24 latents), batch 2 for
    // CFG, cross_attention_dim 64.
    assert_eq!(cn["sample"], serde_json::json!([2, 4, 32, 24]));
    assert_eq!(cn["controlnet_cond"], serde_json::json!([2, 3, 256, 192]));
    // 77 text tokens + 16 ID tokens for each of 3 people.
    assert_eq!(cn["encoder_hidden_states"], serde_json::json!([2, 125, 64]));
    assert_eq!(
        lines[1]["shapes"]["id_embeds"],
        serde_json::json!([3, 1, 512])
    );
}

#[test]
fn bad_arguments_are_input_errors() {
    for (args, needle) in [
        (
            vec!["--graphs", "patch_proj", "--runs", "0"],
            "--runs: must be at least 1",
        ),
        (
            vec!["--graphs", "patch_proj", "--height", "1000"],
            "--height: 1000 is not a positive multiple of 32",
        ),
        (
            vec!["--compare", "tract", "nowhere"],
            "--compare: \"nowhere\" is neither a backend",
        ),
        (
            vec!["--graphs", "unetx"],
            "--graphs: unknown graph \"unetx\"",
        ),
        // GPU settings where no GPU provider runs are refused, not ignored.
        (
            vec!["--graphs", "patch_proj", "--tf32"],
            "--tf32: applies to ONNX Runtime's CUDA provider",
        ),
        (
            vec!["--graphs", "patch_proj", "--cuda-graph"],
            "--cuda-graph: applies to ONNX Runtime's CUDA provider",
        ),
        (
            vec![
                "--graphs",
                "patch_proj",
                "--backend",
                "ort",
                "--ep",
                "cpu",
                "--tf32",
            ],
            "--tf32: TF32 is a CUDA setting",
        ),
    ] {
        let (code, _, stderr) = bench(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
