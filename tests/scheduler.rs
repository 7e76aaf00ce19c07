//! Scheduler parity with diffusers 0.42.1. Every expected value comes from
//! tests/data/scheduler/reference.json, written by tests/reference/scheduler.py.

mod common;

use idpatch::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
    timestep_sweeps: Vec<Sweep>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    config: Map<String, Value>,
    steps: usize,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    recorded_steps: Vec<usize>,
    scaled_inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Sweep {
    kind: String,
    label: String,
    config: Map<String, Value>,
    steps: Vec<usize>,
    timesteps: Vec<Vec<f64>>,
}

fn reference() -> Reference {
    common::read_json(&common::test_data("scheduler").join("reference.json"))
}

/// The reference script's inputs: a 64-bit LCG whose values are exact float32 numbers in [-2, 2).
fn inputs(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f64 / 16777216.0 * 4.0 - 2.0) as f32
        })
        .collect()
}

const SAMPLE_LEN: usize = 32;

fn scheduler_for(kind: &str, config: &Map<String, Value>) -> Scheduler {
    let kind: SchedulerKind = kind.parse().unwrap();
    Scheduler::new(SchedulerConfig::from_map(config, Some(kind), "reference config").unwrap())
}

/// Largest |actual - expected| over the largest |expected|.
fn relative_to_max(actual: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected
        .iter()
        .fold(0.0f64, |m, &e| m.max(f64::from(e).abs()));
    let err = actual.iter().zip(expected).fold(0.0f64, |m, (&a, &e)| {
        m.max((f64::from(a) - f64::from(e)).abs())
    });
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

fn relative(actual: f64, expected: f64) -> f64 {
    if expected == 0.0 {
        actual.abs()
    } else {
        ((actual - expected) / expected).abs()
    }
}

/// How far Euler's fractional Karras timesteps may be from diffusers', in training steps. They
/// interpolate between float32 log-sigmas, and numpy's SIMD float32 log (unlike the correctly
/// rounded one used here) is an ulp off for about a fifth of them; one ulp of a log-sigma moves
/// an interpolated timestep by up to ~2e-5.
const KARRAS_TIMESTEP_TOLERANCE: f64 = 1e-4;

/// Checks every reference case of `kind`; returns (max sigma error, max step output error).
fn check_cases(kind: &str) -> (f64, f64) {
    let reference = reference();
    let cases: Vec<&Case> = reference.cases.iter().filter(|c| c.kind == kind).collect();
    assert!(cases.len() >= 4, "too few reference cases for {kind}");
    let (mut sigma_err, mut step_err) = (0.0f64, 0.0f64);
    for case in cases {
        let name = &case.name;
        let mut scheduler = scheduler_for(kind, &case.config);
        scheduler.set_timesteps(case.steps).unwrap();

        let euler_karras =
            kind == "euler" && case.config.get("use_karras_sigmas") == Some(&Value::Bool(true));
        assert_eq!(
            scheduler.timesteps().len(),
            case.timesteps.len(),
            "{name}: step count"
        );
        for (i, (&t, &expected)) in scheduler
            .timesteps()
            .iter()
            .zip(&case.timesteps)
            .enumerate()
        {
            if euler_karras {
                let err = (t - expected).abs();
                assert!(
                    err <= KARRAS_TIMESTEP_TOLERANCE,
                    "{name}: timestep {i}: {t} vs {expected}"
                );
            } else {
                // Timesteps are float32 (Euler) or integers; serde_json's float parsing may be
                // an f64 ulp off, so both sides compare as float32.
                assert_eq!(t as f32, expected as f32, "{name}: timestep {i}");
            }
        }
        match (&case.sigmas, scheduler.sigmas()) {
            (None, None) => {}
            (Some(expected), Some(actual)) => {
                assert_eq!(actual.len(), expected.len(), "{name}: sigma count");
                for (i, (&s, &e)) in actual.iter().zip(expected).enumerate() {
                    // Sigmas are float32; compare against the float32 the reference printed.
                    let err = relative(f64::from(s), f64::from(e as f32));
                    assert!(err <= 1e-6, "{name}: sigma {i}: {s} vs {e}");
                    sigma_err = sigma_err.max(err);
                }
            }
            (expected, _) => panic!("{name}: sigmas expected {expected:?}"),
        }
        let err = relative(scheduler.init_noise_sigma(), case.init_noise_sigma);
        assert!(
            err <= 1e-6,
            "{name}: init_noise_sigma {} vs {}",
            scheduler.init_noise_sigma(),
            case.init_noise_sigma
        );
        sigma_err = sigma_err.max(err);

        // The denoising chain of the reference script, fed with this scheduler's own outputs.
        let mut sample: Vec<f32> = inputs(7, SAMPLE_LEN).iter().map(|x| x * 4.0).collect();
        let mut recorded = 0;
        for i in 0..scheduler.len() {
            let scaled = scheduler.scale_model_input(&sample, i).unwrap();
            let noise = inputs(2000 + i as u64, SAMPLE_LEN);
            let model_output = inputs(1000 + i as u64, SAMPLE_LEN);
            let next = scheduler
                .step(&model_output, i, &sample, Some(&noise))
                .unwrap();
            if case.recorded_steps.get(recorded) == Some(&i) {
                let err = relative_to_max(&scaled, &case.scaled_inputs[recorded]);
                assert!(
                    err <= 1e-5,
                    "{name}: scale_model_input at step {i}: error {err:e}"
                );
                let err = relative_to_max(&next, &case.outputs[recorded]);
                assert!(err <= 1e-5, "{name}: step {i}: error {err:e}");
                step_err = step_err.max(err);
                recorded += 1;
            }
            sample = next;
        }
        assert_eq!(
            recorded,
            case.recorded_steps.len(),
            "{name}: recorded steps"
        );
    }
    eprintln!("{kind}: max sigma relative error {sigma_err:e}, max step error {step_err:e}");
    (sigma_err, step_err)
}

// Expected values: EulerDiscreteScheduler.from_config(...).set_timesteps / scale_model_input / step.
#[test]
fn euler_matches_diffusers() {
    check_cases("euler");
}

// Expected values: EulerAncestralDiscreteScheduler with randn_tensor replaced by the test noise.
#[test]
fn euler_ancestral_matches_diffusers() {
    check_cases("euler-a");
}

// Expected values: DDIMScheduler.from_config(...).set_timesteps / step (eta 0).
#[test]
fn ddim_matches_diffusers() {
    check_cases("ddim");
}

// Expected values: DPMSolverMultistepScheduler.from_config(...).set_timesteps / step.
#[test]
fn dpm_solver_matches_diffusers() {
    check_cases("dpmpp-2m");
}

// Expected values: <Class>.from_config(...).set_timesteps(n).timesteps for n in 1..=50, 64, 100, 333.
#[test]
fn timesteps_match_diffusers_for_many_step_counts() {
    let reference = reference();
    assert!(reference.timestep_sweeps.len() >= 10);
    for sweep in &reference.timestep_sweeps {
        let mut scheduler = scheduler_for(&sweep.kind, &sweep.config);
        let fractional = sweep.kind == "euler" && sweep.label == "karras";
        let (mut total, mut inexact, mut max_err) = (0, 0, 0.0f64);
        for (&steps, expected) in sweep.steps.iter().zip(&sweep.timesteps) {
            scheduler.set_timesteps(steps).unwrap();
            let actual = scheduler.timesteps();
            let what = format!("{} {} {steps} steps", sweep.kind, sweep.label);
            assert_eq!(actual.len(), expected.len(), "{what}");
            for (&t, &e) in actual.iter().zip(expected) {
                total += 1;
                if fractional {
                    let err = (t - e).abs();
                    assert!(err <= KARRAS_TIMESTEP_TOLERANCE, "{what}: {t} vs {e}");
                    inexact += usize::from(t as f32 != e as f32);
                    max_err = max_err.max(err);
                } else {
                    assert_eq!(t as f32, e as f32, "{what}");
                }
            }
        }
        if fractional {
            eprintln!(
                "euler karras: {inexact} of {total} timesteps differ, by at most {max_err:e}"
            );
        }
    }
}

// Expected values: the reference case built from the SDXL base scheduler_config.json itself.
#[test]
fn default_config_is_sdxl_euler() {
    let reference = reference();
    let case = reference
        .cases
        .iter()
        .find(|c| c.name == "euler/sdxl/30")
        .unwrap();
    let from_reference = SchedulerConfig::from_map(&case.config, None, "reference config").unwrap();
    assert_eq!(SchedulerConfig::default(), from_reference);
    assert_eq!(SchedulerConfig::default().kind, SchedulerKind::Euler);
    let mut scheduler = Scheduler::sdxl(None);
    scheduler.set_timesteps(30).unwrap();
    let as_f32 = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<_>>();
    assert_eq!(as_f32(scheduler.timesteps()), as_f32(&case.timesteps));
}

fn invalid_input_message(err: idpatch::Error) -> String {
    assert_eq!(err.exit_code(), 2, "{err}");
    err.to_string()
}

#[test]
fn step_count_out_of_range_is_an_error() {
    for kind in SchedulerKind::ALL {
        let mut scheduler = Scheduler::sdxl(Some(kind));
        for steps in [0, 1001] {
            let message = invalid_input_message(scheduler.set_timesteps(steps).unwrap_err());
            assert!(message.contains("--steps"), "{message}");
        }
        scheduler.set_timesteps(1000).unwrap();
    }
}

#[test]
fn bad_config_values_name_the_key() {
    let bad = [
        (r#"{"beta_schedule": "cosine"}"#, "beta_schedule"),
        (r#"{"beta_schedule": "squaredcos_cap_v2"}"#, "beta_schedule"),
        (r#"{"timestep_spacing": "uniform"}"#, "timestep_spacing"),
        (r#"{"prediction_type": "sample"}"#, "prediction_type"),
        (r#"{"steps_offset": 1.5}"#, "steps_offset"),
        (r#"{"beta_end": "0.012"}"#, "beta_end"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (
            r#"{"rescale_betas_zero_snr": true}"#,
            "rescale_betas_zero_snr",
        ),
        (r#"{"_class_name": "LMSDiscreteScheduler"}"#, "_class_name"),
        (
            r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#,
            "thresholding",
        ),
        (
            r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
            "algorithm_type",
        ),
        (
            r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true}"#,
            "use_lu_lambdas",
        ),
        (
            r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}"#,
            "solver_order",
        ),
        (
            r#"{"_class_name": "DPMSolverMultistepScheduler", "final_sigmas_type": "one"}"#,
            "final_sigmas_type",
        ),
        (r#"[1, 2]"#, "scheduler_config.json"),
    ];
    for (text, key) in bad {
        let message = invalid_input_message(text.parse::<SchedulerConfig>().unwrap_err());
        assert!(
            message.contains(&format!("scheduler_config.json {key}"))
                || key == "scheduler_config.json",
            "{text}: {message}"
        );
    }
}

#[test]
fn unknown_keys_and_nulls_are_ignored() {
    // What diffusers writes for a DPM-Solver config: nulls, -Infinity, keys of other classes.
    let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
        "variance_type": null, "trained_betas": null, "skip_prk_steps": true, "clip_sample": "x",
        "some_future_option": [1, 2]}"#;
    let config: SchedulerConfig = text.parse().unwrap();
    assert_eq!(config.kind, SchedulerKind::DpmSolverMultistep);
    assert_eq!(config.solver_order, 2);
}

#[test]
fn unknown_scheduler_name_is_an_error() {
    let message = invalid_input_message("lms".parse::<SchedulerKind>().unwrap_err());
    assert!(
        message.contains("--scheduler") && message.contains("lms"),
        "{message}"
    );
}

#[test]
fn ancestral_step_needs_noise() {
    let mut scheduler = Scheduler::sdxl(Some(SchedulerKind::EulerAncestral));
    scheduler.set_timesteps(10).unwrap();
    let x = vec![0.5f32; 8];
    let message = invalid_input_message(scheduler.step(&x, 0, &x, None).unwrap_err());
    assert!(message.contains("noise"), "{message}");
    let short_noise = vec![0.0f32; 4];
    assert!(scheduler.step(&x, 0, &x, Some(&short_noise)).is_err());
    assert!(scheduler.step(&x, 10, &x, Some(&x)).is_err());
}

fn check_cli_json(case: &Case, extra: &[&str]) {
    let steps = case.steps.to_string();
    let mut args = vec![
        "schedule",
        "--scheduler",
        case.kind.as_str(),
        "--steps",
        &steps,
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = common::output(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let timesteps: Vec<f64> = printed["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    let as_f32 = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<_>>();
    assert_eq!(as_f32(&timesteps), as_f32(&case.timesteps), "{}", case.name);
    match &case.sigmas {
        None => assert!(printed["sigmas"].is_null(), "{}", case.name),
        Some(expected) => {
            let sigmas = printed["sigmas"].as_array().unwrap();
            assert_eq!(sigmas.len(), expected.len());
            for (s, &e) in sigmas.iter().zip(expected) {
                assert!(
                    relative(s.as_f64().unwrap(), e) <= 1e-6,
                    "{}: {s} vs {e}",
                    case.name
                );
            }
        }
    }
    let init = printed["init_noise_sigma"].as_f64().unwrap();
    assert!(
        relative(init, case.init_noise_sigma) <= 1e-6,
        "{}",
        case.name
    );
}

// Expected values: reference cases euler/sdxl/30, ddim/sdxl/7 (built-in SDXL config) and
// dpmpp-2m/karras/30 (its config written to a file).
#[test]
fn cli_json_matches_diffusers() {
    let reference = reference();
    let case = |name: &str| reference.cases.iter().find(|c| c.name == name).unwrap();
    check_cli_json(case("euler/sdxl/30"), &[]);
    check_cli_json(case("ddim/sdxl/7"), &[]);
    let karras = case("dpmpp-2m/karras/30");
    let path = std::env::temp_dir().join(format!("idpatch-scheduler-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&karras.config).unwrap()).unwrap();
    check_cli_json(karras, &["--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn cli_bad_steps_exits_with_2() {
    for steps in ["0", "5000", "many"] {
        let output = common::output(&["schedule", "--scheduler", "euler", "--steps", steps]);
        assert_eq!(output.status.code(), Some(2), "--steps {steps}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("--steps"),
            "--steps {steps}"
        );
    }
    let output = common::output(&["schedule", "--scheduler", "lms", "--steps", "10"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn cli_config_values_are_bounded_and_name_the_file() {
    let path = std::env::temp_dir().join(format!("idpatch-huge-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"num_train_timesteps": 1000000000000000}"#).unwrap();
    let output = common::output(&[
        "schedule",
        "--steps",
        "10",
        "--config",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "{name} num_train_timesteps: 1000000000000000 is not 2 to 100000"
        )),
        "{stderr}"
    );
}
