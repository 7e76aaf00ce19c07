//! The graph stages around the denoising loop ([`crate::denoise`]): the text encoders, the ID
//! graphs and the VAE decoder, each on the batch the guidance mode needs.

use crate::backend::Graph;
use crate::pipeline::{first_output, id_embeddings, id_patches, id_tokens, run_host, Job, Models};
use crate::tensor::DType;
use crate::tokenizer::Encoding;
use crate::{Error, Result, Tensor};

/// Both text encoders on `[negative, prompt]` (with guidance) or the prompt alone: the hidden
/// states side by side (B, 77, D) and the pooled embeddings (B, P).
pub fn encode_prompts(models: &mut Models, job: &Job, cfg: bool) -> Result<(Tensor, Tensor)> {
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
pub fn encode_ids(
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

/// VAE decode of scaled latents (1, C, h, w) to `(x / 2 + 0.5).clamp(0, 1)`, planar (3, H, W).
pub fn decode(
    vae: &mut dyn Graph,
    scaled: &Tensor,
    (height, width): (usize, usize),
) -> Result<Vec<f32>> {
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
    let values = decoded
        .as_f32()
        .ok_or_else(|| Error::graph("vae_decoder", "not f32"))?;
    Ok(values
        .iter()
        .map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect())
}

/// (B, T, D1) and (B, T, D2) -> (B, T, D1 + D2).
pub fn side_by_side(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (&[batch, tokens, d1], &[batch_b, tokens_b, d2]) = (a.shape(), b.shape()) else {
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
    let (Some(va), Some(vb)) = (a.as_f32(), b.as_f32()) else {
        return Err(Error::graph(
            "text_encoder",
            "hidden states are not float32",
        ));
    };
    let mut out = Vec::with_capacity(batch * tokens * (d1 + d2));
    for row in 0..batch * tokens {
        out.extend_from_slice(&va[row * d1..(row + 1) * d1]);
        out.extend_from_slice(&vb[row * d2..(row + 1) * d2]);
    }
    Tensor::from_f32(vec![batch, tokens, d1 + d2], out)
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
