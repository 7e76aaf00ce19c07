//! The pipeline's stages called one by one through the library (what a server does): the same
//! result as [`pipeline::generate`], per-step progress, cancellation between steps, and the
//! tiny set's reference case "cfg" (tests/reference/pipeline.py: the tiny set's PyTorch modules,
//! diffusers 0.42.1 EulerDiscreteScheduler, CFG 5.5, 7 steps) reached through the stages.

#![cfg(feature = "tract")]

mod common;

use std::ops::ControlFlow;

use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet};
use idpatch::pipeline::{
    self, Denoised, Encoded, Generated, Job, Models, Params, StepProgress, Tokenizers,
};
use idpatch::{npy, Error, TractBackend};

/// Parameters, layout and initial noise of the reference case "cfg" (tests/data/pipeline).
fn reference_job(set: &ModelSet) -> Job {
    let dir = common::test_data("pipeline");
    let r: serde_json::Value = common::read_json(&dir.join("reference.json"));
    let case = &r["cases"][0];
    assert_eq!(case["name"], "cfg");
    let params = Params {
        prompt: r["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap(),
        controlnet_scale: case["controlnet_scale"].as_f64().unwrap(),
        id_injection_ratio: case["id_injection_ratio"].as_f64().unwrap(),
        ..Params::default()
    };
    let layout = Layout::load(&dir.join("layout.json"), true).unwrap();
    let noise = npy::read(&dir.join("init_noise.npy")).unwrap();
    let tokenizers = Tokenizers::load(set).unwrap();
    pipeline::prepare(
        set,
        &tokenizers,
        layout,
        params,
        Some((noise, "init_noise.npy")),
    )
    .unwrap()
}

fn tiny_models() -> Models {
    let set = ModelSet::open(&common::tiny_dir(), Checksums::Verify).unwrap();
    Models::load(&TractBackend::new(), set).unwrap()
}

/// Runs every stage on its own, recording each step the callback sees.
fn run_stages(models: &mut Models, job: &Job) -> (Generated, Vec<StepProgress>) {
    let mut seen = Vec::new();
    let encoded: Encoded = pipeline::encode(models, job).unwrap();
    let denoised: Denoised = pipeline::denoise(models, job, encoded, &mut |p| {
        seen.push(*p);
        ControlFlow::Continue(())
    })
    .unwrap();
    (pipeline::decode(models, job, denoised).unwrap(), seen)
}

/// The bit patterns of a float32 tensor.
fn bits(t: &idpatch::Tensor) -> Vec<u32> {
    t.as_f32()
        .expect("float32")
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Bit-identical results.
fn assert_same(a: &Generated, b: &Generated, what: &str) {
    assert!(a.image.data() == b.image.data(), "{what}: pixels differ");
    assert!(
        bits(&a.latents) == bits(&b.latents),
        "{what}: latents differ"
    );
    assert!(
        bits(&a.image_f32) == bits(&b.image_f32),
        "{what}: images differ"
    );
    assert!(
        bits(&a.condition) == bits(&b.condition),
        "{what}: conditions differ"
    );
}

/// The stages' types can move between threads: a server prepares on one thread, runs the
/// graphs on a device's worker thread and encodes the PNG on another.
#[test]
fn stage_types_are_send() {
    fn send<T: Send>() {}
    send::<Job>();
    send::<Encoded>();
    send::<Denoised>();
    send::<Generated>();
    send::<Models>();
}

// Expected latents: tests/data/pipeline/latents.npy, written by tests/reference/pipeline.py
// (case "cfg"); the bound is tests/generate.rs's LATENTS_REL_TOL.
#[test]
fn stages_one_by_one_equal_generate_and_report_every_step() {
    let mut models = tiny_models();
    let job = reference_job(&models.set);
    let (staged, seen) = run_stages(&mut models, &job);
    let whole = pipeline::generate(&mut models, &job, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_same(&staged, &whole, "stages vs generate");

    let steps = job.params.steps;
    let expected: Vec<(usize, usize)> = (1..=steps).map(|i| (i, steps)).collect();
    let got: Vec<(usize, usize)> = seen.iter().map(|p| (p.step, p.steps)).collect();
    assert_eq!(got, expected, "one progress call per step, in order");
    assert!(seen.iter().all(|p| !p.took.is_zero()), "{seen:?}");

    let reference = npy::read(&common::test_data("pipeline").join("latents.npy")).unwrap();
    let (a, b) = (
        staged.latents.as_f32().unwrap(),
        reference.as_f32().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let max_err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(
        max_err / scale <= 4e-6,
        "relative error {}",
        max_err / scale
    );
}

/// A callback that breaks stops the loop before the next step with `Error::Cancelled`, and the
/// same loaded graphs then give the next job the same result as before the cancellation.
#[test]
fn breaking_in_the_step_callback_cancels_between_steps() {
    let mut models = tiny_models();
    let job = reference_job(&models.set);
    let (before_cancel, _) = run_stages(&mut models, &job);
    let steps = job.params.steps;
    let stop_after = 3;
    let mut calls = Vec::new();
    let encoded = pipeline::encode(&mut models, &job).unwrap();
    let result = pipeline::denoise(&mut models, &job, encoded, &mut |p| {
        calls.push(p.step);
        if p.step == stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match result {
        Err(Error::Cancelled { step, steps: total }) => {
            assert_eq!((step, total), (stop_after, steps));
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert_eq!(calls, vec![1, 2, 3], "no step ran after the break");
    let err = Error::Cancelled {
        step: stop_after,
        steps,
    };
    assert_eq!(err.to_string(), "cancelled after denoising step 3 of 7");

    let (after_cancel, _) = run_stages(&mut models, &job);
    assert_same(&after_cancel, &before_cancel, "a job after a cancelled one");
}
