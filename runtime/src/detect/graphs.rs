//! The face detector's networks run as a set's graphs on a backend.

use std::time::{Duration, Instant};

use super::Networks;
use crate::backend::{load_checked, to_host_f32, Backend, Graph, Value};
use crate::manifest::{ModelSet, Role};
use crate::{Error, Result, Tensor};

/// Most crops sent to R-Net or O-Net in one run.
const MAX_BATCH: usize = 256;

/// `face_detector_pnet`, `face_detector_rnet` and `face_detector_onet` of a set, loaded.
pub struct GraphNetworks {
    pnet: Box<dyn Graph>,
    rnet: Box<dyn Graph>,
    onet: Box<dyn Graph>,
    graph_time: Duration,
}

impl GraphNetworks {
    /// Loads and checks the three graphs.
    pub fn load(backend: &dyn Backend, set: &ModelSet) -> Result<Self> {
        Ok(GraphNetworks {
            pnet: load_checked(backend, set, Role::FaceDetectorPnet)?,
            rnet: load_checked(backend, set, Role::FaceDetectorRnet)?,
            onet: load_checked(backend, set, Role::FaceDetectorOnet)?,
            graph_time: Duration::ZERO,
        })
    }

    /// Total time spent running the graphs so far.
    pub fn graph_time(&self) -> Duration {
        self.graph_time
    }
}

impl Networks for GraphNetworks {
    fn pnet(&mut self, image: Tensor) -> Result<[Tensor; 2]> {
        let started = Instant::now();
        let out = run(self.pnet.as_mut(), image, &["regression", "probability"]);
        self.graph_time += started.elapsed();
        out
    }

    fn rnet(&mut self, crops: Tensor) -> Result<[Tensor; 2]> {
        let started = Instant::now();
        let out = run_batched(self.rnet.as_mut(), crops, &["regression", "probability"]);
        self.graph_time += started.elapsed();
        out
    }

    fn onet(&mut self, crops: Tensor) -> Result<[Tensor; 3]> {
        let started = Instant::now();
        let names = ["regression", "landmarks", "probability"];
        let out = run_batched(self.onet.as_mut(), crops, &names);
        self.graph_time += started.elapsed();
        out
    }
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

/// [`run`] over crops (n, 3, s, s) in batches of at most [`MAX_BATCH`], each padded with blank
/// crops to a power of two so that a backend preparing a plan per input shape (tract) prepares
/// only a few; the outputs of the `n` crops are joined again.
fn run_batched<const N: usize>(
    graph: &mut dyn Graph,
    crops: Tensor,
    wanted: &[&str; N],
) -> Result<[Tensor; N]> {
    let shape = crops.shape().to_vec();
    let (n, per_crop) = (shape[0], shape[1..].iter().product::<usize>());
    let data = crops.as_f32().expect("crops are f32");
    let mut joined: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    let mut widths = [0usize; N];
    for chunk in data.chunks(MAX_BATCH * per_crop) {
        let rows = chunk.len() / per_crop;
        let padded = rows.next_power_of_two();
        let mut batch = chunk.to_vec();
        batch.resize(padded * per_crop, 0.0);
        let mut batch_shape = shape.clone();
        batch_shape[0] = padded;
        let outputs = run(graph, Tensor::from_f32(batch_shape, batch)?, wanted)?;
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
            joined[k].extend_from_slice(&t.as_f32().expect("f32")[..rows * width]);
        }
    }
    let mut out = Vec::with_capacity(N);
    for (values, width) in joined.into_iter().zip(widths) {
        out.push(Tensor::from_f32(vec![n, width], values)?);
    }
    Ok(out.try_into().expect("one tensor per wanted output"))
}
