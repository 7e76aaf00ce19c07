//! Per-graph latency: warm-up runs, then timed runs summarised by their median and 90th
//! percentile, on inputs taken from a set's golden tensors or made up from its IO spec at a
//! requested image size.
//!
//! This times single graphs. Whole-pipeline timings split by stage (text encoders, ID mappers,
//! the denoising loop, the VAE) belong with the pipeline and are not measured here yet.

use std::time::Instant;

use crate::backend::{Graph, Value};
use crate::manifest::{Dim, ModelSet, Role, TensorSpec};
use crate::tensor::{DType, Tensor};
use crate::{npy, Error, Result};

/// Summary of a set of timings in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Percentile `q` (0..=100) with linear interpolation between the two nearest ranks (numpy's
/// default method). `sorted` must be sorted and non-empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median, p90, min, max and mean of `samples_ms`; None when there are none.
pub fn summarize(samples_ms: &[f64]) -> Option<Stats> {
    if samples_ms.is_empty() {
        return None;
    }
    let mut sorted = samples_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(Stats {
        runs: sorted.len(),
        median_ms: percentile(&sorted, 50.0),
        p90_ms: percentile(&sorted, 90.0),
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// Runs `graph` `warmup` times untimed, then `runs` times timed. Outputs are dropped where they
/// are (device outputs are not copied back), so a run is timed as the pipeline would see it.
pub fn time_graph(
    graph: &mut dyn Graph,
    inputs: &[(String, Value)],
    warmup: usize,
    runs: usize,
) -> Result<Stats> {
    if runs == 0 {
        return Err(Error::invalid_input("--runs", "must be at least 1"));
    }
    let named: Vec<(&str, &Value)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    for _ in 0..warmup {
        graph.run(&named)?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let outputs = graph.run(&named)?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        drop(outputs);
    }
    Ok(summarize(&samples).expect("runs > 0"))
}

/// The sizes inputs are made up at.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSize {
    /// Output image size in pixels (multiples of 32).
    pub height: usize,
    pub width: usize,
    /// People in the photo: the `faces` axis, and 16 ID tokens each on the `sequence` axis.
    pub people: usize,
    /// The `sequence` axis; default text tokens + ID tokens of every person.
    pub sequence: Option<usize>,
}

impl Default for SynthSize {
    fn default() -> Self {
        SynthSize {
            height: 1024,
            width: 1024,
            people: 2,
            sequence: None,
        }
    }
}

/// CFG runs the denoiser graphs on [uncond, cond]; everything else runs once.
fn batch_for(role: Role) -> usize {
    match role {
        Role::Unet | Role::Controlnet => 2,
        _ => 1,
    }
}

/// Concrete shape for a spec at a size.
pub fn synth_shape(
    set: &ModelSet,
    role: Role,
    spec: &TensorSpec,
    size: &SynthSize,
) -> Result<Vec<usize>> {
    let config = &set.manifest.config;
    let latent = |px: usize| px / config.vae_scale_factor;
    spec.shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbol(s) => Ok(match s.as_str() {
                "batch" => batch_for(role),
                "faces" => size.people,
                "sequence" => size
                    .sequence
                    .unwrap_or(config.text_len + config.id_tokens_per_face * size.people),
                "latent_height" => latent(size.height),
                "latent_width" => latent(size.width),
                "latent_height_2" => latent(size.height) / 2,
                "latent_width_2" => latent(size.width) / 2,
                "latent_height_4" => latent(size.height) / 4,
                "latent_width_4" => latent(size.width) / 4,
                "image_height" => size.height,
                "image_width" => size.width,
                other => {
                    return Err(set.error(format!(
                    "graph {role}: input {} has axis {other:?}, which inputs cannot be made up for",
                    spec.name
                )))
                }
            }),
        })
        .collect()
}

/// A small deterministic generator so that made-up inputs are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly N(0, 1): the sum of four uniforms, rescaled.
    fn next_normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.next_unit()).sum();
        (s - 2.0) * 3f32.sqrt()
    }
}

/// Made-up inputs for a graph at a size, in the graph's declared dtypes: plausible values for the
/// inputs whose value matters (token ids, timestep, time ids, scales), noise for the rest.
pub fn synth_inputs(set: &ModelSet, role: Role, size: &SynthSize) -> Result<Vec<(String, Tensor)>> {
    if size.height == 0 || size.height % 32 != 0 {
        return Err(Error::invalid_input(
            "--height",
            format!("{} is not a positive multiple of 32", size.height),
        ));
    }
    if size.width == 0 || size.width % 32 != 0 {
        return Err(Error::invalid_input(
            "--width",
            format!("{} is not a positive multiple of 32", size.width),
        ));
    }
    if size.people == 0 {
        return Err(Error::invalid_input("--people", "must be at least 1"));
    }
    let entry = set.entry(role)?;
    let mut rng = SplitMix(0x1D_9A7C);
    entry
        .inputs
        .iter()
        .map(|spec| {
            let shape = synth_shape(set, role, spec, size)?;
            let n: usize = shape.iter().product();
            let tensor = match (spec.name.as_str(), spec.dtype) {
                (_, DType::Int64 | DType::Int32) => {
                    // BOS, EOS, then EOS padding: a valid empty prompt for both CLIP tokenizers.
                    let row = shape.last().copied().unwrap_or(1).max(1);
                    let ids = (0..n)
                        .map(|i| if i % row == 0 { 49406 } else { 49407 })
                        .collect();
                    Tensor::from_i64(shape, ids)?.cast(spec.dtype)?
                }
                (name, _) => {
                    let data: Vec<f32> = match name {
                        "timestep" => vec![500.0; n],
                        "conditioning_scale" => vec![0.8; n],
                        "time_ids" => {
                            let (h, w) = (size.height as f32, size.width as f32);
                            [h, w, 0.0, 0.0, h, w].into_iter().cycle().take(n).collect()
                        }
                        "controlnet_cond" => (0..n).map(|_| rng.next_unit()).collect(),
                        "face" => (0..n).map(|_| rng.next_unit() * 2.0 - 1.0).collect(),
                        _ => (0..n).map(|_| rng.next_normal()).collect(),
                    };
                    Tensor::from_f32(shape, data)?.cast(spec.dtype)?
                }
            };
            Ok((spec.name.clone(), tensor))
        })
        .collect()
}

/// The golden inputs the exporter saved for a graph, if the set has them.
pub fn golden_inputs(set: &ModelSet, role: Role) -> Result<Option<Vec<(String, Tensor)>>> {
    let Some(dir) = set.golden_dir(role)? else {
        return Ok(None);
    };
    set.entry(role)?
        .inputs
        .iter()
        .map(|spec| {
            let t = npy::read(&dir.join(format!("input.{}.npy", spec.name)))?;
            Ok((spec.name.clone(), t))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values: numpy.median and numpy.percentile(x, 90) (linear method), written by
    /// tests/reference/bench.py into tests/data/bench/stats.json.
    #[test]
    fn median_and_p90_match_numpy() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/bench/stats.json")).unwrap();
        let cases = data["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let samples: Vec<f64> = case["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let stats = summarize(&samples).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            assert!(
                close(stats.median_ms, case["median"].as_f64().unwrap()),
                "{case}"
            );
            assert!(close(stats.p90_ms, case["p90"].as_f64().unwrap()), "{case}");
            assert!(
                close(stats.mean_ms, case["mean"].as_f64().unwrap()),
                "{case}"
            );
            assert_eq!(stats.runs, samples.len());
        }
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn generator_is_deterministic_and_spread() {
        let mut a = SplitMix(7);
        let mut b = SplitMix(7);
        let xs: Vec<f32> = (0..10_000).map(|_| a.next_normal()).collect();
        let ys: Vec<f32> = (0..10_000).map(|_| b.next_normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
