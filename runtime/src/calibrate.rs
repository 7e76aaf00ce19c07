//! Calibration data for INT8 quantization: the UNet's and ControlNet's inputs recorded at
//! sampled denoising steps of real pipeline runs (`idpatch calibrate`), written in the format
//! `calibration/quantize.py` reads (documented in `calibration/README.md`).
//!
//! Each generation runs the whole pipeline ([`crate::pipeline::generate`]) on one prompt and one
//! layout of the calibration set. The two denoiser graphs are wrapped in a [`Recorder`], which
//! passes every call through and, on the steps [`sampled_steps`] picks, writes the inputs it was
//! given to `.npy` files first. Nothing in the pipeline changes: the recorder keeps constants on
//! the host (its `to_device` does not upload) and hands the ControlNet's residuals back as host
//! tensors, so that both graphs' inputs can be read.
//!
//! Files are content-addressed within a generation (`g<NNN>/<input>.<sha256, 16 hex>.npy`): the
//! constants of a generation (encoder states, `text_embeds`, `time_ids`, the condition image,
//! the conditioning scale) are written once, and a step's `sample` and `timestep`, which both
//! graphs take, once for both. The disk bound is checked before anything runs (from the shapes
//! the set's IO spec gives, [`planned_bytes`]) and again before each file is written.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backend::{Graph, GraphIo, Traffic, Value};
use crate::bench::{synth_shape, SynthSize};
use crate::layout::Layout;
use crate::manifest::{ModelSet, Role};
use crate::pipeline::{self, Models, Params, StepProgress, Tokenizers};
use crate::tensor::DType;
use crate::{npy, splice, Error, Result, Tensor};

/// Version of the calibration directory format (`calibration.json`'s `format`).
pub const FORMAT: u32 = 1;
/// The index file of a calibration directory.
pub const INDEX_FILE: &str = "calibration.json";
/// Bytes an `.npy` header takes at most for the shapes recorded here (numpy pads it to 64).
const NPY_HEADER_BYTES: u64 = 128;
/// The golden ratio's fraction: successive generations start their sampled steps at
/// well-spread offsets (a low-discrepancy sequence), so that together they cover every step.
const OFFSET_STEP: f64 = 0.618_033_988_749_894_9;

/// The denoising steps recorded in generation `generation` of a run with `steps` steps, of which
/// the first `first_id_step` run without ID tokens (sequence 77) and the rest with them.
///
/// The run splits into its steps without ID tokens and those with them (one part when the run
/// has only one kind); each part gets its share of the samples, rounded, at least one, and its
/// samples are evenly spaced over it, starting at the fraction `(generation * 0.618...) mod 1`
/// of the first interval, so that every generation records both sequence lengths and successive
/// generations together cover every step. Sorted, distinct, each below `steps`.
///
/// Errors: `samples` below 2 (both sequence lengths cannot be covered) or above `steps`.
pub fn sampled_steps(
    steps: usize,
    samples: usize,
    generation: usize,
    first_id_step: usize,
) -> Result<Vec<usize>> {
    if samples < 2 || samples > steps {
        return Err(Error::invalid_input(
            "--samples-per-generation",
            format!(
                "{samples} must be at least 2 (one step without and one with ID tokens) and at \
                 most --steps ({steps})"
            ),
        ));
    }
    let offset = (generation as f64 * OFFSET_STEP).fract();
    // Within a part of `len` steps from `start`, `n <= len` samples are at least one step
    // apart, so they are distinct.
    let spread = |start: usize, len: usize, n: usize| -> Vec<usize> {
        let spacing = len as f64 / n as f64;
        (0..n)
            .map(|k| start + (((k as f64 + offset) * spacing).floor() as usize).min(len - 1))
            .collect()
    };
    if first_id_step == 0 || first_id_step >= steps {
        return Ok(spread(0, steps, samples));
    }
    let rest = steps - first_id_step;
    let share = (samples as f64 * first_id_step as f64 / steps as f64).round() as usize;
    let mut before = share.clamp(1, first_id_step.min(samples - 1));
    if samples - before > rest {
        before = samples - rest;
    }
    let mut picks = spread(0, first_id_step, before);
    picks.extend(spread(first_id_step, rest, samples - before));
    Ok(picks)
}

/// The first step with ID tokens of a run (`steps` when there is none), as the pipeline's
/// injection schedule ([`splice::ids_active`]) decides.
pub fn first_id_step(steps: usize, id_injection_ratio: f64) -> usize {
    (0..steps)
        .find(|&i| splice::ids_active(i, steps, id_injection_ratio))
        .unwrap_or(steps)
}

/// One recorded graph call in `calibration.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    /// `unet` or `controlnet`.
    pub graph: String,
    pub generation: usize,
    /// Denoising step (0-based) of `steps`.
    pub step: usize,
    /// The timestep the graphs were given (the first row's).
    pub timestep: f32,
    /// Length of `encoder_hidden_states`: 77, or 77 + 16 per person with ID tokens.
    pub sequence: usize,
    pub id_tokens: bool,
    /// Input name -> `.npy` file, relative to the calibration directory.
    pub inputs: BTreeMap<String, String>,
}

/// What the recorders share: where files go, the current generation and step, and what was
/// written so far.
#[derive(Debug)]
struct RecordState {
    dir: PathBuf,
    generation: usize,
    /// The denoising step the graph calls belong to, as the loop's `on_step` reports it.
    step: usize,
    sampled: Vec<usize>,
    text_len: usize,
    records: Vec<Record>,
    /// Files written (relative path), for content-addressed reuse.
    written: BTreeMap<String, u64>,
    bytes: u64,
    max_bytes: u64,
}

/// The recording side of a calibration run: makes [`Recorder`]s and collects their records.
#[derive(Debug, Clone)]
pub struct Recording {
    state: Arc<Mutex<RecordState>>,
}

fn locked(state: &Mutex<RecordState>) -> Result<MutexGuard<'_, RecordState>> {
    state
        .lock()
        .map_err(|_| Error::graph("calibrate", "a recorder failed while holding its state"))
}

impl Recording {
    /// Records into `dir` (which must exist), writing at most `max_bytes` in all; `text_len` is
    /// the sequence length without ID tokens.
    pub fn new(dir: &Path, max_bytes: u64, text_len: usize) -> Recording {
        Recording {
            state: Arc::new(Mutex::new(RecordState {
                dir: dir.to_path_buf(),
                generation: 0,
                step: 0,
                sampled: Vec::new(),
                text_len,
                records: Vec::new(),
                written: BTreeMap::new(),
                bytes: 0,
                max_bytes,
            })),
        }
    }

    /// Wraps a denoiser graph (UNet or ControlNet) so that its calls are recorded.
    pub fn wrap(&self, inner: Box<dyn Graph>) -> Box<dyn Graph> {
        Box::new(Recorder {
            inner,
            state: Arc::clone(&self.state),
        })
    }

    /// Starts generation `generation`, recording the steps `sampled`.
    pub fn start_generation(&self, generation: usize, sampled: &[usize]) -> Result<()> {
        let mut st = locked(&self.state)?;
        st.generation = generation;
        st.step = 0;
        st.sampled = sampled.to_vec();
        Ok(())
    }

    /// Tells the recorders that the next graph calls belong to denoising step `step` (0-based).
    pub fn set_step(&self, step: usize) {
        // A poisoned lock means a recorder failed; its error reaches the caller through `run`.
        if let Ok(mut st) = self.state.lock() {
            st.step = step;
        }
    }

    /// The records so far and the bytes written.
    pub fn finish(&self) -> Result<(Vec<Record>, u64)> {
        let st = locked(&self.state)?;
        Ok((st.records.clone(), st.bytes))
    }
}

/// A denoiser graph whose inputs are written to the calibration directory on sampled steps.
/// Constants stay on the host ([`Graph::to_device`] does not upload) and the ControlNet's
/// outputs come back as host values, so that every input the UNet gets can be read.
pub struct Recorder {
    inner: Box<dyn Graph>,
    state: Arc<Mutex<RecordState>>,
}

impl Recorder {
    fn record(&self, st: &mut RecordState, inputs: &[(&str, &Value)]) -> Result<()> {
        let role = self.inner.role();
        let mut files = BTreeMap::new();
        let (mut timestep, mut sequence) = (f32::NAN, 0);
        for (name, value) in inputs {
            let Value::Host(tensor) = value else {
                return Err(Error::graph(
                    role.name(),
                    format!("input {name} is in device memory and cannot be recorded"),
                ));
            };
            match *name {
                "timestep" => timestep = tensor.to_f32_vec().first().copied().unwrap_or(f32::NAN),
                "encoder_hidden_states" => sequence = tensor.shape().get(1).copied().unwrap_or(0),
                _ => {}
            }
            files.insert(name.to_string(), write_input(st, name, tensor)?);
        }
        let record = Record {
            graph: role.name().to_string(),
            generation: st.generation,
            step: st.step,
            timestep,
            sequence,
            id_tokens: sequence > st.text_len,
            inputs: files,
        };
        st.records.push(record);
        Ok(())
    }
}

/// Writes one input under the current generation's folder, named by its content; returns the
/// path relative to the calibration directory. A file already written is not written again.
fn write_input(st: &mut RecordState, name: &str, tensor: &Tensor) -> Result<String> {
    let bytes = npy::to_bytes(tensor);
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let relative = format!("g{:03}/{name}.{digest}.npy", st.generation);
    if st.written.contains_key(&relative) {
        return Ok(relative);
    }
    let size = bytes.len() as u64;
    if st.bytes + size > st.max_bytes {
        return Err(Error::invalid_input(
            "--max-bytes",
            format!(
                "recording {relative} ({size} B) would take the calibration data past {} B; \
                 raise --max-bytes or record fewer generations or samples",
                st.max_bytes
            ),
        ));
    }
    let path = st.dir.join(&relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    st.bytes += size;
    st.written.insert(relative.clone(), size);
    Ok(relative)
}

impl Graph for Recorder {
    fn role(&self) -> Role {
        self.inner.role()
    }

    fn io(&self) -> &GraphIo {
        self.inner.io()
    }

    fn run(&mut self, inputs: &[(&str, &Value)]) -> Result<Vec<Value>> {
        let role = self.inner.role();
        let mut st = locked(&self.state)?;
        if st.sampled.contains(&st.step) {
            self.record(&mut st, inputs)?;
        }
        drop(st);
        let outputs = self.inner.run(inputs)?;
        if role != Role::Controlnet {
            return Ok(outputs);
        }
        outputs
            .into_iter()
            .map(|v| Ok(Value::Host(self.inner.to_host(v)?)))
            .collect()
    }

    fn to_device(&self, tensor: Tensor) -> Result<Value> {
        Ok(Value::Host(tensor))
    }

    fn traffic(&self) -> Option<Traffic> {
        self.inner.traffic()
    }

    fn to_host(&self, value: Value) -> Result<Tensor> {
        self.inner.to_host(value)
    }
}

/// One generation of a calibration run.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub index: usize,
    pub prompt: String,
    /// The layout file, as given.
    pub layout: String,
    pub width: u32,
    pub height: u32,
    pub people: usize,
    pub seed: u64,
    /// The steps recorded.
    pub steps: Vec<usize>,
}

/// Bytes a calibration run of `generations` would write at most (npy headers counted at 128
/// B): per generation the constants once (encoder states at both sequence lengths,
/// `text_embeds`, `time_ids`, the condition image, the scale), and per sampled step `sample`,
/// `timestep` and the UNet's residual inputs, at batch 2 (classifier-free guidance).
pub fn planned_bytes(set: &ModelSet, plan: &[(Generation, Layout)]) -> Result<u64> {
    let controlnet = set.entry(Role::Controlnet)?;
    let unet = set.entry(Role::Unet)?;
    let config = &set.manifest.config;
    let mut total = 0u64;
    for (generation, layout) in plan {
        let size = |sequence| SynthSize {
            height: layout.height as usize,
            width: layout.width as usize,
            people: layout.people.len(),
            sequence,
        };
        let bytes = |role: Role, name: &str, size: &SynthSize| -> Result<u64> {
            let entry = set.entry(role)?;
            let Some(spec) = entry.inputs.iter().find(|s| s.name == name) else {
                return Ok(0);
            };
            let n: usize = synth_shape(set, role, spec, size)?.iter().product();
            Ok(n as u64 * element_bytes(spec.dtype) + NPY_HEADER_BYTES)
        };
        let full = size(None);
        let mut once = bytes(
            Role::Controlnet,
            "encoder_hidden_states",
            &size(Some(config.text_len)),
        )?;
        for spec in &controlnet.inputs {
            if !matches!(spec.name.as_str(), "sample" | "timestep") {
                once += bytes(Role::Controlnet, &spec.name, &full)?;
            }
        }
        let mut per_step = 0;
        for spec in &unet.inputs {
            let constant = controlnet.inputs.iter().any(|c| c.name == spec.name)
                && !matches!(spec.name.as_str(), "sample" | "timestep");
            if !constant {
                per_step += bytes(Role::Unet, &spec.name, &full)?;
            }
        }
        total += once + per_step * generation.steps.len() as u64;
    }
    Ok(total)
}

fn element_bytes(dtype: DType) -> u64 {
    match dtype {
        DType::Float32 | DType::Int32 => 4,
        DType::Float16 => 2,
        DType::Int64 => 8,
    }
}

/// Runs every generation of `plan` on `models` with `base`'s settings (its prompt and seed
/// replaced by each generation's), recording the denoiser inputs of the sampled steps through
/// `recording`. Each generation runs the encode stage and the denoising loop only as far as its
/// last sampled step (the loop is stopped there through its `on_step` callback; nothing later
/// is recorded, and the VAE decoder never runs). `models` is consumed and returned with its UNet
/// and ControlNet wrapped in [`Recorder`]s. `progress(generation)` is called after each
/// generation, once its files are on disk.
///
/// Errors: what the pipeline stages report, and [`Error::InvalidInput`] naming `--max-bytes`
/// when a file would take the data past the bound.
pub fn run(
    models: Models,
    tokenizers: &Tokenizers,
    plan: &[(Generation, Layout)],
    base: &Params,
    recording: &Recording,
    progress: &mut dyn FnMut(&Generation) -> Result<()>,
) -> Result<Models> {
    let mut models = Models {
        unet: recording.wrap(models.unet),
        controlnet: recording.wrap(models.controlnet),
        ..models
    };
    for (generation, layout) in plan {
        let params = Params {
            prompt: generation.prompt.clone(),
            seed: generation.seed,
            ..base.clone()
        };
        let job = pipeline::prepare(&models.set, tokenizers, layout.clone(), params, None)?;
        recording.start_generation(generation.index, &generation.steps)?;
        let last = generation.steps.iter().max().copied().unwrap_or(0);
        let encoded = pipeline::encode(&mut models, &job)?;
        let mut on_step = |p: &StepProgress| {
            recording.set_step(p.step);
            // `p.step` steps are done: step `p.step - 1` was the last one run.
            if p.step > last {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        match pipeline::denoise(&mut models, &job, encoded, &mut on_step) {
            Ok(_) | Err(Error::Cancelled { .. }) => {}
            Err(e) => return Err(e),
        }
        progress(generation)?;
    }
    Ok(models)
}

/// `calibration.json`: the run's settings, its generations and every record.
#[derive(Debug, Serialize)]
pub struct Index<'a> {
    pub format: u32,
    /// False while the run is going on (the index is rewritten after every generation): the
    /// files listed are on disk, the later generations are not.
    pub complete: bool,
    pub models: String,
    pub model_set: String,
    pub model_set_digest: String,
    /// sha256 of the UNet's and ControlNet's graph files, as the set's manifest lists them.
    pub graphs: BTreeMap<String, String>,
    pub backend: String,
    pub steps: usize,
    pub guidance: f64,
    pub controlnet_scale: f64,
    pub id_injection_ratio: f64,
    pub samples_per_generation: usize,
    pub generations: &'a [Generation],
    pub records: &'a [Record],
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_steps_cover_both_sequence_lengths() {
        // 50 steps at ID-Patch's injection ratio 0.8: steps 0-9 without ID tokens.
        let first = first_id_step(50, 0.8);
        assert_eq!(first, 10);
        for generation in 0..40 {
            for samples in [2, 3, 4, 8] {
                let steps = sampled_steps(50, samples, generation, first).unwrap();
                assert_eq!(steps.len(), samples, "{generation} {samples} {steps:?}");
                assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
                assert!(steps.iter().all(|&s| s < 50));
                assert!(steps.iter().any(|&s| s < first), "{steps:?}");
                assert!(steps.iter().any(|&s| s >= first), "{steps:?}");
            }
        }
        // Over many generations every step is recorded somewhere.
        let mut seen = [false; 50];
        for generation in 0..64 {
            for s in sampled_steps(50, 4, generation, first).unwrap() {
                seen[s] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }

    #[test]
    fn sampled_steps_refuse_impossible_counts() {
        for (steps, samples) in [(50, 1), (50, 0), (3, 4)] {
            let err = sampled_steps(steps, samples, 0, 1).unwrap_err().to_string();
            assert!(err.starts_with("--samples-per-generation"), "{err}");
        }
        // Without ID tokens at all (ratio 0) one sequence length is all there is.
        let first = first_id_step(10, 0.0);
        assert_eq!(first, 10);
        assert_eq!(sampled_steps(10, 2, 0, first).unwrap(), [0, 5]);
    }

    #[test]
    fn inputs_are_written_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = RecordState {
            dir: dir.path().to_path_buf(),
            generation: 3,
            step: 0,
            sampled: vec![],
            text_len: 77,
            records: vec![],
            written: BTreeMap::new(),
            bytes: 0,
            max_bytes: 1000,
        };
        let t = Tensor::from_f32(vec![2, 3], vec![1.0; 6]).unwrap();
        let a = write_input(&mut st, "sample", &t).unwrap();
        let b = write_input(&mut st, "sample", &t).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("g003/sample.") && a.ends_with(".npy"), "{a}");
        assert_eq!(st.bytes, npy::to_bytes(&t).len() as u64);
        assert_eq!(npy::read(&dir.path().join(&a)).unwrap(), t);
        // Past the bound: an error naming the flag, and no file.
        let big = Tensor::from_f32(vec![1000], vec![2.0; 1000]).unwrap();
        let err = write_input(&mut st, "sample", &big)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--max-bytes"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("g003")).unwrap().count(),
            1
        );
    }
}
