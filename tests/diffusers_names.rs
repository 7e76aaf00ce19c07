//! diffusers' parameter names on the command line (`--num-inference-steps`, `--guidance-scale`,
//! `--controlnet-conditioning-scale`) beside the short ones, and diffusers' names in JSON output.
//! `bench --pipeline` is covered in tests/bench_pipeline.rs, the PNG `generate` writes with them
//! in tests/infotext.rs.

mod common;

use serde_json::Value;

fn schedule(args: &[&str]) -> (i32, String, String) {
    let output = common::command()
        .arg("schedule")
        .args(args)
        .output()
        .unwrap();
    common::code_stdout_stderr(output)
}

// The same schedule under either name; the JSON carries diffusers' names.
#[test]
fn schedule_takes_num_inference_steps() {
    let (code, short, stderr) = schedule(&["--steps", "7", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, long, stderr) = schedule(&["--num-inference-steps", "7", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(short, long);
    let v: Value = serde_json::from_str(&long).unwrap();
    assert_eq!(v["num_inference_steps"], 7);
    assert_eq!(v["_class_name"], "EulerDiscreteScheduler");
    assert_eq!(v["timesteps"].as_array().unwrap().len(), 7);

    let (code, _, stderr) = schedule(&["--num-inference-steps", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error: --num-inference-steps: "),
        "{stderr}"
    );
    let (code, _, stderr) = schedule(&["--steps", "3", "--num-inference-steps", "3"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

// Errors name the flag as typed; both spellings of one setting are a usage error.
#[test]
fn diffusers_flags_are_named_in_errors() {
    let layout = common::tiny_dir().join("examples/layout.json");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--num-inference-steps", "0"],
            "error: --num-inference-steps: 0 is not between 1 and 1000",
        ),
        (&["--guidance-scale", "101"], "error: --guidance-scale: "),
        (
            &["--controlnet-conditioning-scale", "-1"],
            "error: --controlnet-conditioning-scale: ",
        ),
        (
            &["--guidance-scale", "1", "--negative-prompt", "x"],
            "(--guidance-scale 1 is not above 1); drop it or raise --guidance-scale",
        ),
    ];
    for (args, needle) in cases {
        let output = common::command()
            .args([
                "generate",
                "--prompt",
                "x",
                "--out",
                "/tmp/never-written.png",
                "--layout",
            ])
            .arg(&layout)
            .args(args)
            .output()
            .unwrap();
        let (code, _, stderr) = common::code_stdout_stderr(output);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let output = common::command()
        .args([
            "generate",
            "--prompt",
            "x",
            "--out",
            "/tmp/never-written.png",
            "--layout",
        ])
        .arg(&layout)
        .args(["--guidance", "2", "--guidance-scale", "2"])
        .output()
        .unwrap();
    let (code, _, stderr) = common::code_stdout_stderr(output);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/never-written.png").exists());
}
