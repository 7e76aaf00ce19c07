//! Per-graph latency: warm-up runs, then timed runs summarised by their median and 90th
//! percentile, on inputs taken from a set's golden tensors or made up from its IO spec at a
//! requested image size.
//!
//! [`time_pipeline`] times the whole pipeline instead: graphs loaded once, then `prepare` and
//! `generate` per run, summarised per stage of [`Timings`].

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::backend::{Backend, Graph, Value};
use crate::face::ARCFACE_SIZE;
use crate::image_io::Rgb8;
use crate::layout::{Layout, Person, Placement, MAX_PEOPLE};
use crate::manifest::{Dim, ModelSet, Role, TensorSpec};
use crate::pipeline::{self, GenerationTraffic, Models, Params, Timings, Tokenizers};
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
    summarize(&samples).ok_or_else(|| Error::invalid_input("--runs", "must be at least 1"))
}

/// The sizes inputs are made up at.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSize {
    /// Output image size in pixels (multiples of the set's VAE factor times its latent multiple:
    /// 32 for SDXL).
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

/// A small deterministic generator so that made-up inputs are the same on every run: the
/// seeded noise's SplitMix64.
struct SplitMix(crate::noise::SplitMix64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        SplitMix(crate::noise::SplitMix64::new(seed))
    }

    fn next_unit(&mut self) -> f32 {
        (self.0.next_u64() >> 40) as f32 / (1u64 << 24) as f32
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
    pipeline::check_image_sides(
        &set.manifest.config,
        [("--height", size.height), ("--width", size.width)],
    )?;
    if size.people == 0 {
        return Err(Error::invalid_input("--people", "must be at least 1"));
    }
    let entry = set.entry(role)?;
    let mut rng = SplitMix::new(0x1D_9A7C);
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

/// Reads one stage's time from a run's [`Timings`].
pub type StageTime = fn(&Timings) -> Duration;

/// The per-run stages of the pipeline in order, as [`Timings`] records them. Graph loading
/// (once, before the runs) and `first_runs` (a part of `controlnet` + `unet`) are not among
/// them, so a run's total is exactly the sum of these.
pub const PIPELINE_STAGES: [(&str, StageTime); 10] = [
    ("faces", |t| t.faces),
    ("tokenize", |t| t.tokenize),
    ("text_encoders", |t| t.text_encoders),
    ("id_graphs", |t| t.id_graphs),
    ("condition", |t| t.condition),
    ("controlnet", |t| t.controlnet),
    ("unet", |t| t.unet),
    ("scheduler", |t| t.scheduler),
    ("vae_decode", |t| t.vae_decode),
    ("to_rgb", |t| t.to_rgb),
];

/// Whole-pipeline timings over several runs.
#[derive(Debug, Clone)]
pub struct PipelineStats {
    /// Per stage of [`PIPELINE_STAGES`], in that order.
    pub stages: Vec<(&'static str, Stats)>,
    /// ControlNet and UNet first runs at each sequence length (already inside their stages).
    pub first_runs: Stats,
    /// Per run, the sum of the stages.
    pub total: Stats,
    /// Per run, [`Timings::rust_owned`].
    pub rust_owned: Stats,
    /// Loading every graph, once before the runs.
    pub load_graphs_ms: f64,
    /// ControlNet calls per run and steps its control guidance window skipped.
    pub controlnet_calls: usize,
    pub controlnet_skipped: usize,
    /// Per run, the ControlNet time the window saved (skipped steps times the median call), when
    /// steps were skipped and a call after the first run per sequence length was timed.
    pub controlnet_saved: Option<Stats>,
    /// Bytes the backend moved in the last timed run (the same in every run); `None` for a
    /// backend without device memory.
    pub traffic: Option<GenerationTraffic>,
}

impl PipelineStats {
    /// Median Rust-owned time over median total time.
    pub fn rust_owned_share(&self) -> f64 {
        self.rust_owned.median_ms / self.total.median_ms
    }

    /// Summarises the timings of each run.
    pub fn from_runs(runs: &[Timings], load_graphs: Duration) -> Option<PipelineStats> {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let of = |f: &dyn Fn(&Timings) -> f64| summarize(&runs.iter().map(f).collect::<Vec<_>>());
        let stages = PIPELINE_STAGES
            .iter()
            .map(|(name, get)| Some((*name, of(&|t| ms(get(t)))?)))
            .collect::<Option<Vec<_>>>()?;
        let total = |t: &Timings| PIPELINE_STAGES.iter().map(|(_, get)| ms(get(t))).sum();
        let saved: Vec<f64> = runs
            .iter()
            .filter_map(|t| t.controlnet_saved().map(ms))
            .collect();
        let last = runs.last()?;
        Some(PipelineStats {
            stages,
            first_runs: of(&|t| ms(t.first_runs))?,
            total: of(&total)?,
            rust_owned: of(&|t| ms(t.rust_owned()))?,
            load_graphs_ms: ms(load_graphs),
            controlnet_calls: last.controlnet_calls,
            controlnet_skipped: last.controlnet_skipped,
            controlnet_saved: summarize(&saved),
            traffic: None,
        })
    }
}

/// A pose-free layout of `people` people at evenly spaced positions across the middle of a
/// `width` x `height` image; faces come separately (see [`synth_face`]).
pub fn synth_layout(width: usize, height: usize, people: usize) -> Result<Layout> {
    if people == 0 || people > MAX_PEOPLE {
        return Err(Error::invalid_input(
            "--people",
            format!("{people} is not between 1 and {MAX_PEOPLE}"),
        ));
    }
    let side = |flag: &str, value: usize| {
        u32::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Error::invalid_input(flag, format!("{value} is not a valid side")))
    };
    let (w, h) = (side("--width", width)?, side("--height", height)?);
    let people = (0..people)
        .map(|i| Person {
            face: None,
            placement: Placement::Position([
                w as f32 * (2 * i + 1) as f32 / (2 * people) as f32,
                h as f32 / 2.0,
            ]),
            face_keypoints: None,
            face_index: None,
        })
        .collect();
    Ok(Layout {
        width: w,
        height: h,
        people,
    })
}

/// A made-up aligned 112x112 face crop: a light oval on a grey background, so that timing
/// needs no face photo.
pub fn synth_face() -> Result<Rgb8> {
    let n = ARCFACE_SIZE;
    let mut data = Vec::with_capacity(n * n * 3);
    let c = n as f32 / 2.0;
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = ((x as f32 - c) / 40.0, (y as f32 - c) / 52.0);
            let pixel = if dx * dx + dy * dy <= 1.0 {
                [224, 180, 150]
            } else {
                [96, 96, 96]
            };
            data.extend_from_slice(&pixel);
        }
    }
    Rgb8::new(n, n, data)
}

/// Loads the graphs of `set` once, then runs `prepare` + `generate` `warmup` times untimed and
/// `runs` times timed on `layout`, writing nothing. `face_images` (people order) replace the
/// layout's face photos when given. Inputs are checked before any graph loads.
pub fn time_pipeline(
    backend: &dyn Backend,
    set: ModelSet,
    layout: &Layout,
    params: &Params,
    face_images: Option<&[Rgb8]>,
    warmup: usize,
    runs: usize,
) -> Result<PipelineStats> {
    if runs == 0 {
        return Err(Error::invalid_input("--runs", "must be at least 1"));
    }
    let tokenizers = Tokenizers::load(&set)?;
    let prepare = |set: &ModelSet| {
        pipeline::prepare_with_faces(
            set,
            &tokenizers,
            layout.clone(),
            params.clone(),
            None,
            face_images,
        )
    };
    prepare(&set)?;
    let started = Instant::now();
    let mut models = Models::load(backend, set)?;
    let load_graphs = started.elapsed();
    let mut timings = Vec::with_capacity(runs);
    let mut traffic = None;
    for run in 0..warmup + runs {
        let job = prepare(&models.set)?;
        let generated = pipeline::generate(&mut models, &job, &mut |_| ControlFlow::Continue(()))?;
        if run >= warmup {
            timings.push(generated.timings);
            traffic = generated.traffic;
        }
    }
    let mut stats = PipelineStats::from_runs(&timings, load_graphs)
        .ok_or_else(|| Error::invalid_input("--runs", "must be at least 1"))?;
    stats.traffic = traffic;
    Ok(stats)
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

    // The sum of four U(0, 1) has mean 2 and variance 4/12, so (s - 2) * sqrt(3) has mean 0 and
    // variance 1.
    #[test]
    fn generator_is_spread_like_a_standard_normal() {
        let mut a = SplitMix::new(7);
        let xs: Vec<f32> = (0..10_000).map(|_| a.next_normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
