//! The denoiser graphs' constant inputs on the host ([`DenoiserInputs`]) and the bytes a
//! generation moved between host and device ([`GenerationTraffic`]).

use crate::backend::Traffic;
use crate::splice::{self, EncoderStates};
use crate::{Error, Result, Tensor};

/// The denoiser graphs' inputs that stay the same on every step, on the host, batch `B` (2 with
/// classifier-free guidance, `[uncond, cond]`; 1 without, the conditional half).
#[derive(Debug, Clone)]
pub struct DenoiserInputs {
    /// Encoder hidden states before ID injection, (B, 77, D), and after, (B, 77 + 16F, D).
    pub states: [Tensor; 2],
    /// Pooled text embedding of text_encoder_2, (B, P).
    pub text_embeds: Tensor,
    /// SDXL's micro-conditioning `[H, W, 0, 0, H, W]` per row, (B, 6).
    pub time_ids: Tensor,
    /// The condition image repeated per row, (B, 3, H, W).
    pub controlnet_cond: Tensor,
    /// The ControlNet conditioning scale, (1,).
    pub conditioning_scale: Tensor,
}

impl DenoiserInputs {
    /// From the text encoders' joined hidden states `text` (B, 77, D) and pooled embeddings
    /// (B, P), both `[negative, prompt]` when B = 2; the ID tokens (F, 16, D), with the negative
    /// ones (prompt_proj of zeros) exactly when B = 2; the condition image (3, H, W).
    pub fn new(
        text: &Tensor,
        pooled: Tensor,
        id_tokens: &Tensor,
        negative_id_tokens: Option<&Tensor>,
        condition: &Tensor,
        controlnet_scale: f64,
    ) -> Result<Self> {
        let (&[batch, _, _], &[3, height, width]) = (text.shape(), condition.shape()) else {
            return Err(Error::graph(
                "text_encoder",
                format!(
                    "hidden states {:?} or condition {:?} have the wrong rank",
                    text.shape(),
                    condition.shape()
                ),
            ));
        };
        let states = match (batch, negative_id_tokens) {
            (2, Some(negative)) => {
                let (uncond, cond) = (text.index_axis(0, 0)?, text.index_axis(0, 1)?);
                let states = EncoderStates::new(&uncond, &cond, negative, id_tokens)?;
                [states.text_only().clone(), states.full().clone()]
            }
            (1, None) => [text.clone(), splice::splice(text, id_tokens)?],
            _ => {
                return Err(Error::graph(
                    "text_encoder",
                    format!("hidden states of batch {batch} do not match the guidance mode"),
                ))
            }
        };
        if pooled.shape().first() != Some(&batch) {
            return Err(Error::graph(
                "text_encoder_2",
                format!("text_embeds {:?} for batch {batch}", pooled.shape()),
            ));
        }
        let time_row = [height, width, 0, 0, height, width].map(|v| v as f32);
        let time_row = Tensor::from_f32(vec![6], time_row.to_vec())?;
        Ok(DenoiserInputs {
            states,
            text_embeds: pooled,
            time_ids: time_row.broadcast_to(&[batch, 6])?,
            controlnet_cond: condition.broadcast_to(&[batch, 3, height, width])?,
            conditioning_scale: Tensor::from_f32(vec![1], vec![controlnet_scale as f32])?,
        })
    }

    /// Rows of the batch: 2 with classifier-free guidance, 1 without.
    pub fn batch(&self) -> usize {
        self.time_ids.shape().first().copied().unwrap_or(0)
    }
}

/// Bytes the backend moved during one generation ([`Traffic`]); absent for backends without
/// device memory.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationTraffic {
    /// The per-generation uploads of the denoiser graphs' constant inputs, before the first step.
    pub constants: Traffic,
    /// Each denoising step: `sample` and `timestep` up, `noise_pred` down.
    pub steps: Vec<Traffic>,
    /// The whole generation: text encoders, ID graphs, constants, steps and VAE decode.
    pub total: Traffic,
}

impl GenerationTraffic {
    /// Lines for the timing table: the constants, each distinct per-step figure with the number
    /// of steps that moved it, and the whole generation.
    pub fn summary(&self) -> String {
        let fmt = |t: &Traffic| {
            format!(
                "host->device {} B, device->host {} B, device->device {} B",
                t.host_to_device, t.device_to_host, t.device_to_device
            )
        };
        let mut distinct: Vec<(Traffic, usize)> = Vec::new();
        for step in &self.steps {
            match distinct.iter_mut().find(|(t, _)| t == step) {
                Some((_, count)) => *count += 1,
                None => distinct.push((*step, 1)),
            }
        }
        let mut out = format!("traffic: constants (once) {}", fmt(&self.constants));
        for (t, count) in distinct {
            out.push_str(&format!("\ntraffic: per step ({count} steps) {}", fmt(&t)));
        }
        out.push_str(&format!("\ntraffic: whole generation {}", fmt(&self.total)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(shape: Vec<usize>, base: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|i| base + i as f32).collect()).unwrap()
    }

    #[test]
    fn inputs_for_guidance_are_uncond_then_cond() {
        let (d, f) = (4, 2);
        let text = filled(vec![2, 77, d], 0.0); // row 0 negative, row 1 prompt
        let pooled = filled(vec![2, 3], 0.0);
        let ids = filled(vec![f, 16, d], 1_000.0);
        let neg_ids = filled(vec![f, 16, d], 5_000.0);
        let cond = filled(vec![3, 8, 16], 0.0);
        let inputs = DenoiserInputs::new(&text, pooled, &ids, Some(&neg_ids), &cond, 0.8).unwrap();
        assert_eq!(inputs.batch(), 2);
        assert_eq!(inputs.states[0].shape(), [2, 77, d]);
        assert_eq!(inputs.states[0], text);
        assert_eq!(inputs.states[1].shape(), [2, 77 + 16 * f, d]);
        let full = inputs.states[1].as_f32().unwrap();
        let row = |b: usize, t: usize| full[(b * (77 + 32) + t) * d];
        assert_eq!(row(0, 77), 5_000.0); // negative ID tokens after the negative text
        assert_eq!(row(1, 0), (77 * d) as f32); // the prompt's first token
        assert_eq!(row(1, 77), 1_000.0);
        assert_eq!(
            inputs.time_ids.as_f32().unwrap(),
            [8.0, 16.0, 0.0, 0.0, 8.0, 16.0, 8.0, 16.0, 0.0, 0.0, 8.0, 16.0]
        );
        assert_eq!(inputs.controlnet_cond.shape(), [2, 3, 8, 16]);
        let c = inputs.controlnet_cond.as_f32().unwrap();
        assert_eq!(c[..384], c[384..]);
        assert_eq!(inputs.conditioning_scale.as_f32().unwrap(), [0.8]);
    }

    #[test]
    fn inputs_without_guidance_are_the_conditional_half_alone() {
        let d = 4;
        let text = filled(vec![1, 77, d], 0.0);
        let ids = filled(vec![1, 16, d], 1_000.0);
        let cond = filled(vec![3, 8, 8], 0.0);
        let pooled = filled(vec![1, 3], 0.0);
        let inputs = DenoiserInputs::new(&text, pooled, &ids, None, &cond, 1.0).unwrap();
        assert_eq!(inputs.batch(), 1);
        assert_eq!(inputs.states[0], text);
        assert_eq!(inputs.states[1].shape(), [1, 77 + 16, d]);
        assert_eq!(inputs.states[1].as_f32().unwrap()[77 * d], 1_000.0);
        assert_eq!(inputs.time_ids.shape(), [1, 6]);
        assert_eq!(inputs.controlnet_cond.shape(), [1, 3, 8, 8]);
        // Batch and guidance mode must agree.
        let pooled = filled(vec![1, 3], 0.0);
        assert!(DenoiserInputs::new(&text, pooled, &ids, Some(&ids), &cond, 1.0).is_err());
    }

    #[test]
    fn traffic_summary_groups_equal_steps() {
        let step = Traffic {
            host_to_device: 3080,
            device_to_host: 3072,
            device_to_device: 0,
        };
        let report = GenerationTraffic {
            constants: Traffic {
                host_to_device: 100,
                ..Traffic::default()
            },
            steps: vec![step; 7],
            total: Traffic::default(),
        };
        let text = report.summary();
        assert!(
            text.contains("constants (once) host->device 100 B"),
            "{text}"
        );
        assert!(
            text.contains(
                "per step (7 steps) host->device 3080 B, device->host 3072 B, device->device 0 B"
            ),
            "{text}"
        );
    }
}
