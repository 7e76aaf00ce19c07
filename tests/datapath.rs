//! The denoiser's data path on ONNX Runtime's CPU provider, measured with the backend's byte
//! counters through `idpatch bench --pipeline --json`: constant inputs are uploaded once per
//! generation, per step only `sample` and `timestep` go up and `noise_pred` comes back, and no
//! device value is copied before it is bound.
//!
//! The expected byte counts are written from the tiny set's shapes (manifest.json) and the
//! layout, as README.md's formula states them; nothing here is measured from a previous run.
//! Needs libonnxruntime 1.31.1: `scripts/test.sh` fetches it (scripts/fetch-onnxruntime.sh) and
//! sets ORT_DYLIB_PATH.

#![cfg(feature = "ort")]

mod common;

use idpatch::manifest::{Checksums, Dim, ModelSet, Role};
use serde_json::Value;

const F32: u64 = 4;

/// The shapes the traffic depends on, for the pipeline test layout (96x64, 3 people).
struct Shapes {
    set: ModelSet,
    latent: (u64, u64),
    image: (u64, u64),
    people: u64,
}

fn shapes() -> Shapes {
    let set = ModelSet::open(&common::tiny_dir(), Checksums::Skip).unwrap();
    let f = set.manifest.config.vae_scale_factor as u64;
    Shapes {
        latent: (64 / f, 96 / f),
        image: (64, 96),
        people: 3,
        set,
    }
}

impl Shapes {
    fn sample(&self, batch: u64) -> u64 {
        let channels = self.set.manifest.config.latent_channels as u64;
        batch * channels * self.latent.0 * self.latent.1 * F32
    }

    /// Bytes of the UNet's residual inputs (the ControlNet's outputs) at `batch`.
    fn residuals(&self, batch: u64) -> u64 {
        let (lh, lw) = self.latent;
        let unet = self.set.entry(Role::Unet).unwrap();
        let controlnet = self.set.entry(Role::Controlnet).unwrap();
        controlnet
            .outputs
            .iter()
            .map(|out| {
                let spec = unet.inputs.iter().find(|s| s.name == out.name).unwrap();
                let dims = spec.shape.iter().map(|d| match d {
                    Dim::Fixed(n) => *n as u64,
                    Dim::Symbol(s) => match s.as_str() {
                        "batch" => batch,
                        "latent_height" => lh,
                        "latent_width" => lw,
                        "latent_height_2" => lh / 2,
                        "latent_width_2" => lw / 2,
                        "latent_height_4" => lh / 4,
                        "latent_width_4" => lw / 4,
                        other => panic!("axis {other}"),
                    },
                });
                dims.product::<u64>() * F32
            })
            .sum()
    }

    /// Per-generation uploads: both encoder-state variants, text_embeds, time_ids, and the
    /// ControlNet's condition and scale when it runs, zero residuals when it skips a step.
    fn constants(&self, batch: u64, controlnet_runs: bool, controlnet_skips: bool) -> u64 {
        let c = &self.set.manifest.config;
        let text = c.text_len as u64;
        let ids = c.id_tokens_per_face as u64 * self.people;
        let dim = c.cross_attention_dim as u64;
        let mut bytes = batch * text * dim * F32
            + batch * (text + ids) * dim * F32
            + batch * c.pooled_dim as u64 * F32
            + batch * 6 * F32;
        if controlnet_runs {
            bytes += batch * 3 * self.image.0 * self.image.1 * F32 + F32;
        }
        if controlnet_skips {
            bytes += self.residuals(batch);
        }
        bytes
    }
}

/// `bench --pipeline --json` on ort-cpu over the pipeline test layout with `extra` flags.
fn bench_ort(extra: &[&str]) -> Value {
    let layout = common::test_data("pipeline").join("layout.json");
    let mut args = vec![
        "--pipeline",
        "--layout",
        layout.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
        "--backend",
        "ort",
        "--ep",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = common::bench(&args);
    assert_eq!(
        code, 0,
        "{stderr} (ONNX Runtime 1.31.1 is needed: run scripts/fetch-onnxruntime.sh, or the tests \
         through scripts/test.sh)"
    );
    let mut lines = common::json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    lines.remove(0)
}

fn traffic(v: &Value) -> (u64, u64, u64) {
    (
        v["host_to_device"].as_u64().unwrap(),
        v["device_to_host"].as_u64().unwrap(),
        v["device_to_device"].as_u64().unwrap(),
    )
}

/// Asserts the constants and every step of a run against the formula.
fn assert_traffic(v: &Value, steps: usize, batch: u64, constants: u64) {
    let s = shapes();
    assert_eq!(v["batch"], batch, "{v}");
    let t = &v["traffic"];
    assert_eq!(traffic(&t["constants"]), (constants, 0, 0), "{t}");
    let per_step = t["per_step"].as_array().unwrap();
    assert_eq!(per_step.len(), steps, "{t}");
    // H2D = sample + timestep, D2H = noise_pred, D2D = 0.
    let expected = (s.sample(batch) + batch * F32, s.sample(batch), 0);
    for (i, step) in per_step.iter().enumerate() {
        assert_eq!(traffic(step), expected, "step {i}: {t}");
    }
    let (h2d, d2h, d2d) = traffic(&t["total"]);
    assert!(h2d > constants + steps as u64 * expected.0, "{t}");
    assert!(d2h > steps as u64 * expected.1, "{t}");
    assert_eq!(d2d, 0, "{t}");
}

#[test]
fn guidance_uploads_constants_once_and_two_latents_per_step() {
    let v = bench_ort(&["--steps", "3"]);
    let constants = shapes().constants(2, true, false);
    assert_traffic(&v, 3, 2, constants);
    assert_eq!(v["controlnet"]["calls"], 3);
    assert_eq!(v["controlnet"]["skipped"], 0);
    assert!(v["controlnet"]["saved"].is_null(), "{v}");
}

#[test]
fn guidance_1_runs_batch_1() {
    let v = bench_ort(&["--steps", "3", "--guidance", "1"]);
    let constants = shapes().constants(1, true, false);
    assert_traffic(&v, 3, 1, constants);
}

#[test]
fn control_window_uploads_zero_residuals_once() {
    // Of 5 steps, 1, 2 and 3 are kept: 1/5 >= 0.2 and 4/5 <= 0.8.
    let v = bench_ort(&[
        "--steps",
        "5",
        "--control-guidance-start",
        "0.2",
        "--control-guidance-end",
        "0.8",
    ]);
    let constants = shapes().constants(2, true, true);
    assert_traffic(&v, 5, 2, constants);
    assert_eq!(v["controlnet"]["calls"], 3);
    assert_eq!(v["controlnet"]["skipped"], 2);
    assert!(
        v["controlnet"]["saved"]["median_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn a_window_without_controlnet_steps_never_uploads_its_inputs() {
    // 1/3 >= 0.4 fails for step 1 and 3/3 <= 0.7 fails for step 2: no step is kept.
    let v = bench_ort(&[
        "--steps",
        "3",
        "--control-guidance-start",
        "0.4",
        "--control-guidance-end",
        "0.7",
    ]);
    let constants = shapes().constants(2, false, true);
    assert_traffic(&v, 3, 2, constants);
    assert_eq!(v["controlnet"]["calls"], 0);
    assert_eq!(v["stages"]["controlnet"]["median_ms"], 0.0);
}

#[cfg(feature = "tract")]
#[test]
fn tract_reports_no_traffic() {
    let (code, stdout, stderr) = common::bench(&[
        "--pipeline",
        "--height",
        "64",
        "--width",
        "64",
        "--people",
        "1",
        "--steps",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v = &common::json_lines(&stdout)[0];
    assert_eq!(v["backend"], "tract");
    assert!(v["traffic"].is_null(), "{v}");
}

#[test]
fn window_and_guidance_flags_need_pipeline() {
    for flag in [
        "--guidance",
        "--control-guidance-start",
        "--control-guidance-end",
    ] {
        let (code, _, stderr) = common::bench(&["--graphs", "unet", flag, "0.5"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("{flag}: needs --pipeline")),
            "{stderr}"
        );
    }
}
