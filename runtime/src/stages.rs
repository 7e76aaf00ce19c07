//! The graph stages around the denoising loop ([`crate::denoise`]):
//! - [`encode`]: both text encoders, ArcFace, `patch_proj` and `prompt_proj` on the batch the
//!   guidance mode needs, then the ControlNet condition image and the token splicing, giving the
//!   denoiser's constant inputs ([`Encoded`]);
//! - [`decode`]: the VAE decoder on the final latents, `(x / 2 + 0.5).clamp(0, 1)` and 8-bit RGB
//!   ([`Generated`]).
//!
//! Both run graphs on host tensors through [`run_host`], which checks every output for NaN and
//! infinity.

use std::time::Instant;

use crate::backend::{Graph, Traffic, Value};
use crate::condition::{self, ConditionOptions};
use crate::denoise::{Denoised, DenoiserInputs, GenerationTraffic};
use crate::manifest::Role;
use crate::pipeline::{to_rgb8, Generated, Job, Models};
use crate::tensor::DType;
use crate::timings::Timings;
use crate::tokenizer::Encoding;
use crate::{Error, Result, Tensor};

/// What [`encode`] gives the denoising loop.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The denoiser graphs' inputs that stay the same on every step, batch 2 (`[negative,
    /// prompt]`) with classifier-free guidance, 1 without.
    pub inputs: DenoiserInputs,
    /// The ControlNet condition image (3, H, W), float32: pose skeleton and ID patches.
    pub condition: Tensor,
    /// The job's timings with `text_encoders`, `id_graphs` and `condition` filled in.
    pub timings: Timings,
    /// The backend's traffic counters before the first graph of the generation ran.
    pub(crate) traffic_start: Option<Traffic>,
}

/// The encode stage: text encoders (the prompt, and the negative prompt with guidance), ArcFace
/// on the job's face batch, the ID patches (`patch_proj`) and ID tokens (`prompt_proj`, and of
/// zero embeddings with guidance), then the condition image and the spliced encoder states.
///
/// Errors: [`Error::Graph`] when a graph fails, returns outputs of unexpected shapes or a NaN or
/// infinity; [`Error::ModelSet`] when the encoders' width disagrees with the set's
/// `config.cross_attention_dim`.
pub fn encode(models: &mut Models, job: &Job) -> Result<Encoded> {
    let mut timings = job.timings.clone();
    let traffic_start = models.unet.traffic();
    let cfg = job.params.do_classifier_free_guidance();

    let started = Instant::now();
    let (text, pooled) = encode_prompts(models, job, cfg)?;
    timings.text_encoders = started.elapsed();

    let started = Instant::now();
    let (patches, tokens, negative_tokens) = encode_ids(models, &job.faces, cfg)?;
    timings.id_graphs = started.elapsed();

    let started = Instant::now();
    let options = ConditionOptions {
        bf16_positions: job.params.bf16_positions,
    };
    let condition = condition::condition_tensor(&job.layout, &patches, &options)?;
    let inputs = DenoiserInputs::new(
        &text,
        pooled,
        &tokens,
        negative_tokens.as_ref(),
        &condition,
        job.params.controlnet_scale,
    )?;
    timings.condition = started.elapsed();
    Ok(Encoded {
        inputs,
        condition,
        timings,
        traffic_start,
    })
}

/// The decode stage: the final latents divided by the set's `vae_scaling_factor`, the VAE
/// decoder, `(x / 2 + 0.5).clamp(0, 1)`, and the 8-bit RGB image ([`to_rgb8`]). The PNG is
/// [`crate::image_io::encode_png`] of [`Generated::image`] with the caller's text chunks.
///
/// Errors: [`Error::Graph`] when the VAE decoder fails, gives an image of another size than the
/// job's layout, or a NaN or infinity.
pub fn decode(models: &mut Models, job: &Job, denoised: Denoised) -> Result<Generated> {
    let mut timings = denoised.timings;
    let (height, width) = (job.layout.height as usize, job.layout.width as usize);
    let started = Instant::now();
    let factor = models.set.manifest.config.vae_scaling_factor as f32;
    let latents = denoised.latents;
    let scaled = Tensor::from_array(latents.f32_array("latents")?.mapv(|x| x / factor));
    let decoded = vae_decode(models.vae_decoder.as_mut(), &scaled, (height, width))?;
    timings.vae_decode = started.elapsed();

    let started = Instant::now();
    let planar = decoded
        .as_f32()
        .ok_or_else(|| Error::graph("vae_decoder", "not f32"))?;
    let image = to_rgb8(planar, width, height)?;
    timings.to_rgb = started.elapsed();
    let traffic = match (
        denoised.traffic,
        denoised.traffic_start,
        models.unet.traffic(),
    ) {
        (Some(t), Some(a), Some(b)) => Some(GenerationTraffic {
            total: b.since(a),
            ..t
        }),
        _ => None,
    };
    Ok(Generated {
        image,
        latents,
        image_f32: decoded,
        condition: denoised.condition,
        timings,
        traffic,
    })
}

/// Both text encoders on `[negative, prompt]` (with guidance) or the prompt alone: the hidden
/// states side by side (B, 77, D) and the pooled embeddings (B, P).
fn encode_prompts(models: &mut Models, job: &Job, cfg: bool) -> Result<(Tensor, Tensor)> {
    // Rows of Job's `[negative, prompt]` encodings the graphs run on.
    let rows: &[usize] = if cfg { &[0, 1] } else { &[1] };
    let ids = |tokens: &[Encoding; 2]| {
        let v: Vec<i64> = rows
            .iter()
            .flat_map(|&r| tokens[r].ids.iter().copied())
            .collect();
        Tensor::from_i64(vec![rows.len(), tokens[0].ids.len()], v)
    };
    let ids_1 = ids(&job.tokens_1)?;
    let ids_2 = ids(&job.tokens_2)?;
    let hidden_1 = first_output(
        run_host(models.text_encoder.as_mut(), &[("input_ids", &ids_1)], "")?,
        "text_encoder",
    )?;
    let out_2 = run_host(models.text_encoder_2.as_mut(), &[("input_ids", &ids_2)], "")?;
    let Ok::<[Tensor; 2], _>([hidden_2, pooled]) = out_2.try_into() else {
        return Err(Error::graph(
            "text_encoder_2",
            "expected 2 outputs (hidden_states, text_embeds)",
        ));
    };
    let text = side_by_side(&hidden_1, &hidden_2)?;
    let dim = text.shape()[2];
    let expected = models.set.manifest.config.cross_attention_dim;
    if dim != expected {
        return Err(models.set.error(format!(
            "text encoders give {dim} features together, config.cross_attention_dim is {expected}"
        )));
    }
    Ok((text, pooled))
}

/// ArcFace, then the ID patches and ID tokens; with guidance also the negative ID tokens
/// (prompt_proj of zero embeddings).
fn encode_ids(
    models: &mut Models,
    faces: &Tensor,
    cfg: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let embeddings = id_embeddings(models.arcface.as_mut(), faces)?;
    let patches = id_patches(models.patch_proj.as_mut(), &embeddings)?;
    let tokens = id_tokens(models.prompt_proj.as_mut(), &embeddings)?;
    let negative = if cfg {
        let zeros = Tensor::zeros(embeddings.shape().to_vec(), DType::Float32);
        Some(id_tokens(models.prompt_proj.as_mut(), &zeros)?)
    } else {
        None
    };
    Ok((patches, tokens, negative))
}

/// VAE decode of scaled latents (1, C, h, w) to `(x / 2 + 0.5).clamp(0, 1)`, (1, 3, H, W)
/// float32.
fn vae_decode(
    vae: &mut dyn Graph,
    scaled: &Tensor,
    (height, width): (usize, usize),
) -> Result<Tensor> {
    let decoded = first_output(
        run_host(vae, &[("latent", scaled)], "after the last step")?,
        "vae_decoder",
    )?;
    if decoded.shape() != [1, 3, height, width] {
        return Err(Error::graph(
            "vae_decoder",
            format!(
                "image has shape {:?}, expected [1, 3, {height}, {width}]",
                decoded.shape()
            ),
        ));
    }
    let image = decoded
        .into_array::<f32>()
        .ok_or_else(|| Error::graph("vae_decoder", "not f32"))?;
    Ok(Tensor::from_array(
        image.mapv_into(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0)),
    ))
}

/// Runs a graph on host tensors: inputs are cast to the dtypes the graph declares, outputs come
/// back as f32 host tensors, and a NaN or infinity in any output is an error naming it.
pub fn run_host(
    graph: &mut dyn Graph,
    inputs: &[(&str, &Tensor)],
    context: &str,
) -> Result<Vec<Tensor>> {
    let values = host_values(graph, inputs)?;
    let named: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (*n, v)).collect();
    let outputs = graph.run(&named)?;
    let specs = graph.io().outputs.clone();
    outputs
        .into_iter()
        .zip(&specs)
        .map(|(value, spec)| {
            let tensor = graph.to_host(value)?.cast(DType::Float32)?;
            check_finite(&tensor, graph.role(), &spec.name, context)?;
            Ok(tensor)
        })
        .collect()
}

/// Host values of `inputs`, each cast to the dtype the graph declares for it.
fn host_values<'a>(
    graph: &dyn Graph,
    inputs: &[(&'a str, &Tensor)],
) -> Result<Vec<(&'a str, Value)>> {
    inputs
        .iter()
        .map(|(name, tensor)| {
            let dtype = graph
                .io()
                .inputs
                .iter()
                .find(|s| s.name == *name)
                .map_or(tensor.dtype(), |s| s.dtype);
            Ok((*name, Value::Host(tensor.to_dtype(dtype)?)))
        })
        .collect()
}

pub(crate) fn check_finite(tensor: &Tensor, role: Role, output: &str, context: &str) -> Result<()> {
    match tensor.first_non_finite() {
        Some(i) => Err(Error::graph(
            role.name(),
            format!("NaN or infinity in output {output} {context} (flat index {i})"),
        )),
        None => Ok(()),
    }
}

/// ArcFace embeddings (F, 1, 512) of a face batch (F, 3, 112, 112).
pub fn id_embeddings(arcface: &mut dyn Graph, faces: &Tensor) -> Result<Tensor> {
    let out = run_host(arcface, &[("face", faces)], "")?;
    let embedding = out
        .into_iter()
        .next()
        .ok_or_else(|| Error::graph("arcface", "the graph returned no output"))?;
    let &[f, d] = embedding.shape() else {
        return Err(Error::graph(
            "arcface",
            format!(
                "expected a (faces, dim) embedding, got {:?}",
                embedding.shape()
            ),
        ));
    };
    embedding.into_shape(&[f, 1, d])
}

/// ID patches (F, 3, 64, 64) from embeddings (F, 1, 512).
pub fn id_patches(patch_proj: &mut dyn Graph, embeddings: &Tensor) -> Result<Tensor> {
    first_output(
        run_host(patch_proj, &[("id_embeds", embeddings)], "")?,
        "patch_proj",
    )
}

/// ID tokens (F, 16, D) from embeddings (F, 1, 512).
pub fn id_tokens(prompt_proj: &mut dyn Graph, embeddings: &Tensor) -> Result<Tensor> {
    first_output(
        run_host(prompt_proj, &[("id_embeds", embeddings)], "")?,
        "prompt_proj",
    )
}

pub(crate) fn first_output(outputs: Vec<Tensor>, graph: &str) -> Result<Tensor> {
    outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::graph(graph, "the graph returned no output"))
}

/// (B, T, D1) and (B, T, D2) -> (B, T, D1 + D2).
pub fn side_by_side(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (&[batch, tokens, _], &[batch_b, tokens_b, _]) = (a.shape(), b.shape()) else {
        return Err(Error::graph(
            "text_encoder",
            format!(
                "hidden states {:?} and {:?} are not (batch, tokens, dim)",
                a.shape(),
                b.shape()
            ),
        ));
    };
    if (batch, tokens) != (batch_b, tokens_b) {
        return Err(Error::graph(
            "text_encoder_2",
            format!(
                "hidden states {:?} do not match text_encoder's {:?}",
                b.shape(),
                a.shape()
            ),
        ));
    }
    Tensor::concatenate(2, &[a, b])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected: torch.cat([a, b], dim=-1), as diffusers joins the two encoders' hidden states:
    // [1, 2, 10, 3, 4, 20] (torch 2.11).
    #[test]
    fn hidden_states_are_joined_on_the_feature_axis() {
        let a = Tensor::from_f32(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_f32(vec![1, 2, 1], vec![10.0, 20.0]).unwrap();
        let joined = side_by_side(&a, &b).unwrap();
        assert_eq!(joined.shape(), [1, 2, 3]);
        assert_eq!(joined.as_f32().unwrap(), [1.0, 2.0, 10.0, 3.0, 4.0, 20.0]);
    }
}
