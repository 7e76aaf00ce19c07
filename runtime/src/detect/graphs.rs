//! The face detector's networks run as a set's graphs on a backend.
//!
//! tract runs a graph on one thread, so on tract the detector loads one instance of each graph
//! per worker (up to [`MAX_WORKERS`], at most the machine's parallelism) and runs the pyramid
//! levels, in 48-row bands ([`super::bands`]), and the crop batches side by side. ONNX Runtime
//! spreads each run over its own thread pool, so there one instance runs each level whole.

use std::time::{Duration, Instant};

use super::{bands, Networks};
use crate::backend::{load_checked, to_host_f32, Backend, Graph, Value};
use crate::manifest::{ModelSet, Role};
use crate::{Error, Result, Tensor};

/// Most crops sent to R-Net or O-Net in one run.
const MAX_BATCH: usize = 256;
/// Batches above this many crops are padded to a multiple of it, smaller ones to a power of two.
const BATCH_STEP: usize = 32;
/// Most graph instances run side by side.
pub const MAX_WORKERS: usize = 4;
/// Fewest crops worth a worker of their own.
const MIN_CROPS_PER_WORKER: usize = 16;

const PNET_OUTPUTS: [&str; 2] = ["regression", "probability"];
const RNET_OUTPUTS: [&str; 2] = ["regression", "probability"];
const ONET_OUTPUTS: [&str; 3] = ["regression", "landmarks", "probability"];

/// `face_detector_pnet`, `face_detector_rnet` and `face_detector_onet` of a set, loaded once per
/// worker.
pub struct GraphNetworks {
    pnet: Vec<Box<dyn Graph>>,
    rnet: Vec<Box<dyn Graph>>,
    onet: Vec<Box<dyn Graph>>,
    /// Run P-Net over large levels in bands.
    banded: bool,
    graph_time: Duration,
}

impl GraphNetworks {
    /// Loads and checks the three graphs, once per worker: one on backends that parallelise each
    /// run themselves, up to [`MAX_WORKERS`] on tract, which also gets P-Net in bands.
    pub fn load(backend: &dyn Backend, set: &ModelSet) -> Result<Self> {
        if backend.name() == "tract" {
            let workers = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS);
            Self::load_workers(backend, set, workers, true)
        } else {
            Self::load_workers(backend, set, 1, false)
        }
    }

    /// [`GraphNetworks::load`] with `workers` instances of each graph (at least 1), P-Net run in
    /// bands or not.
    pub fn load_workers(
        backend: &dyn Backend,
        set: &ModelSet,
        workers: usize,
        banded: bool,
    ) -> Result<Self> {
        let load = |role| {
            (0..workers.max(1))
                .map(|_| load_checked(backend, set, role))
                .collect::<Result<Vec<_>>>()
        };
        Ok(GraphNetworks {
            pnet: load(Role::FaceDetectorPnet)?,
            rnet: load(Role::FaceDetectorRnet)?,
            onet: load(Role::FaceDetectorOnet)?,
            banded,
            graph_time: Duration::ZERO,
        })
    }

    /// Graph instances run side by side.
    pub fn workers(&self) -> usize {
        self.pnet.len()
    }

    /// Total wall time spent running the graphs so far.
    pub fn graph_time(&self) -> Duration {
        self.graph_time
    }
}

impl Networks for GraphNetworks {
    fn pnet(&mut self, levels: Vec<Tensor>) -> Result<Vec<[Tensor; 2]>> {
        let started = Instant::now();
        let out = run_levels(&mut self.pnet, levels, self.banded);
        self.graph_time += started.elapsed();
        out
    }

    fn rnet(&mut self, crops: Tensor) -> Result<[Tensor; 2]> {
        let started = Instant::now();
        let out = run_crops(&mut self.rnet, crops, &RNET_OUTPUTS);
        self.graph_time += started.elapsed();
        out
    }

    fn onet(&mut self, crops: Tensor) -> Result<[Tensor; 3]> {
        let started = Instant::now();
        let out = run_crops(&mut self.onet, crops, &ONET_OUTPUTS);
        self.graph_time += started.elapsed();
        out
    }
}

/// P-Net on every level, whole or (`banded`) in bands. Pieces go to the least loaded worker (by
/// pixels), largest first, so the same image always gives each worker the same shapes; each
/// level's band outputs are joined again.
fn run_levels(
    graphs: &mut [Box<dyn Graph>],
    levels: Vec<Tensor>,
    banded: bool,
) -> Result<Vec<[Tensor; 2]>> {
    let mut pieces: Vec<((usize, usize), Tensor)> = Vec::new();
    for (index, level) in levels.into_iter().enumerate() {
        let rows = if banded {
            bands::band_rows(level.shape()[2], bands::BAND_ROWS)
        } else {
            vec![(0, level.shape()[2])]
        };
        if rows.len() == 1 {
            pieces.push(((index, 0), level));
        } else {
            for (k, &r) in rows.iter().enumerate() {
                pieces.push(((index, k), bands::slice_rows(&level, r)?));
            }
        }
    }
    let mut assigned: Vec<Vec<((usize, usize), Tensor)>> =
        graphs.iter().map(|_| Vec::new()).collect();
    let mut load = vec![0usize; graphs.len()];
    pieces.sort_by_key(|(_, t)| std::cmp::Reverse(t.len()));
    for (key, piece) in pieces {
        let worker = (0..load.len()).min_by_key(|&w| load[w]).expect("a worker");
        load[worker] += piece.len();
        assigned[worker].push((key, piece));
    }
    let results = run_parallel(graphs, assigned, |graph, work| {
        work.into_iter()
            .map(|(key, piece)| Ok((key, run(graph, piece, &PNET_OUTPUTS)?)))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut done: Vec<((usize, usize), [Tensor; 2])> = results.into_iter().flatten().collect();
    done.sort_by_key(|(key, _)| *key);
    let mut out: Vec<[Tensor; 2]> = Vec::new();
    let mut parts: Vec<(usize, [Tensor; 2])> = Vec::new();
    for ((index, _), tensors) in done {
        if parts.first().is_some_and(|(i, _)| *i != index) {
            out.push(join_level(std::mem::take(&mut parts))?);
        }
        parts.push((index, tensors));
    }
    if !parts.is_empty() {
        out.push(join_level(parts)?);
    }
    Ok(out)
}

/// One level's outputs from its bands (or its single run).
fn join_level(parts: Vec<(usize, [Tensor; 2])>) -> Result<[Tensor; 2]> {
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part").1);
    }
    let (regression, probability): (Vec<Tensor>, Vec<Tensor>) =
        parts.into_iter().map(|(_, [r, p])| (r, p)).unzip();
    Ok([
        bands::join_rows(regression)?,
        bands::join_rows(probability)?,
    ])
}

/// R-Net or O-Net over crops (n, 3, s, s): split among the workers (each at least
/// [`MIN_CROPS_PER_WORKER`] crops), in batches of at most [`MAX_BATCH`], each padded with blank
/// crops to [`padded_batch`] rows so that a backend preparing a plan per input shape (tract)
/// prepares only a few; the outputs of the `n` crops are joined again in order.
fn run_crops<const N: usize>(
    graphs: &mut [Box<dyn Graph>],
    crops: Tensor,
    wanted: &[&str; N],
) -> Result<[Tensor; N]> {
    let shape = crops.shape().to_vec();
    let (n, per_crop) = (shape[0], shape[1..].iter().product::<usize>());
    let data = crops.as_f32().expect("crops are f32");
    let workers = graphs.len().min(n.div_ceil(MIN_CROPS_PER_WORKER)).max(1);
    let per_worker = n.div_ceil(workers).max(1);
    let mut assigned: Vec<Vec<&[f32]>> = graphs.iter().map(|_| Vec::new()).collect();
    for (w, part) in data.chunks(per_worker * per_crop).enumerate() {
        assigned[w] = part.chunks(MAX_BATCH * per_crop).collect();
    }
    let results = run_parallel(graphs, assigned, |graph, batches| {
        batches
            .into_iter()
            .map(|batch| run_batch(graph, batch, &shape, wanted))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut joined: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    let mut widths = [0usize; N];
    for (values, batch_widths) in results.into_iter().flatten() {
        for k in 0..N {
            joined[k].extend_from_slice(&values[k]);
            widths[k] = batch_widths[k];
        }
    }
    let mut out = Vec::with_capacity(N);
    for (values, width) in joined.into_iter().zip(widths) {
        out.push(Tensor::from_f32(vec![n, width], values)?);
    }
    Ok(out.try_into().expect("one tensor per wanted output"))
}

/// One padded batch of crops; returns each output's values for the real crops and its width.
fn run_batch<const N: usize>(
    graph: &mut dyn Graph,
    batch: &[f32],
    shape: &[usize],
    wanted: &[&str; N],
) -> Result<([Vec<f32>; N], [usize; N])> {
    let per_crop: usize = shape[1..].iter().product();
    let rows = batch.len() / per_crop;
    let padded = padded_batch(rows);
    let mut data = batch.to_vec();
    data.resize(padded * per_crop, 0.0);
    let mut batch_shape = shape.to_vec();
    batch_shape[0] = padded;
    let outputs = run(graph, Tensor::from_f32(batch_shape, data)?, wanted)?;
    let mut values: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    let mut widths = [0usize; N];
    for (k, t) in outputs.into_iter().enumerate() {
        let width = match t.shape() {
            [b, w] if *b == padded => *w,
            other => {
                return Err(Error::graph(
                    graph.role().name(),
                    format!(
                        "expected {padded} rows of {}, got shape {other:?}",
                        wanted[k]
                    ),
                ))
            }
        };
        widths[k] = width;
        values[k] = t.as_f32().expect("f32")[..rows * width].to_vec();
    }
    Ok((values, widths))
}

/// Runs `job` on each graph with its share of `work`, side by side when more than one graph has
/// work; results in graph order.
fn run_parallel<W: Send, R: Send>(
    graphs: &mut [Box<dyn Graph>],
    work: Vec<W>,
    job: impl Fn(&mut dyn Graph, W) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if graphs.len() == 1 {
        let w = work.into_iter().next().expect("one share per graph");
        return Ok(vec![job(graphs[0].as_mut(), w)?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = graphs
            .iter_mut()
            .zip(work)
            .map(|(graph, w)| {
                let job = &job;
                scope.spawn(move || job(graph.as_mut(), w))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a detector worker panicked"))
            .collect()
    })
}

/// Runs `graph` on `image` and returns the outputs named `wanted`, in that order, as finite f32.
fn run<const N: usize>(
    graph: &mut dyn Graph,
    image: Tensor,
    wanted: &[&str; N],
) -> Result<[Tensor; N]> {
    let input = Value::Host(image);
    let outputs = graph.run(&[("image", &input)])?;
    let names: Vec<String> = graph.io().outputs.iter().map(|s| s.name.clone()).collect();
    let mut named = Vec::with_capacity(names.len());
    for (name, value) in names.into_iter().zip(outputs) {
        named.push((name, to_host_f32(graph, value)?));
    }
    let role = graph.role();
    let mut out = Vec::with_capacity(N);
    for want in wanted {
        let at = named
            .iter()
            .position(|(n, _)| n == want)
            .ok_or_else(|| Error::graph(role.name(), format!("the graph has no output {want}")))?;
        let tensor = named.swap_remove(at).1;
        if let Some(i) = tensor.first_non_finite() {
            return Err(Error::graph(
                role.name(),
                format!("output {want} has a non-finite value at index {i}"),
            ));
        }
        out.push(tensor);
    }
    Ok(out.try_into().expect("one tensor per wanted output"))
}

/// Rows a batch of `rows` crops is padded to: a power of two up to [`BATCH_STEP`], then a
/// multiple of it (13 distinct sizes, at most 31 blank crops).
fn padded_batch(rows: usize) -> usize {
    if rows <= BATCH_STEP {
        rows.next_power_of_two()
    } else {
        rows.div_ceil(BATCH_STEP) * BATCH_STEP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_padded_to_few_sizes() {
        let sizes: Vec<usize> = [1, 2, 3, 5, 17, 32, 33, 64, 65, 250, 256]
            .map(padded_batch)
            .to_vec();
        assert_eq!(sizes, [1, 2, 4, 8, 32, 32, 64, 64, 96, 256, 256]);
        let distinct: std::collections::BTreeSet<usize> =
            (1..=MAX_BATCH).map(padded_batch).collect();
        assert_eq!(distinct.len(), 13);
    }
}
