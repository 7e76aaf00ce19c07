//! Token splicing and the ID injection schedule.
//!
//! The conditional sequence is the 77 text tokens followed by the 16 ID tokens of each person in
//! people order (77 + 16F tokens); the unconditional one is the negative text followed by the ID
//! mapper's output for zero embeddings. For the first steps (step `i < N * (1 - ratio)`) the UNet
//! and the ControlNet see only the 77 text tokens of both halves; from then on, the full sequence.

use ndarray::IxDyn;

use crate::tensor::{self, DType, Element};
use crate::{Error, Result, Tensor};

/// Text tokens per prompt (CLIP context length).
pub const TEXT_TOKENS: usize = 77;
/// ID tokens each person contributes.
pub const ID_TOKENS_PER_PERSON: usize = 16;

/// Whether step `step` (0-based) of `num_steps` sees the ID tokens. Same float64 comparison as
/// the reference, `step < num_steps * (1 - ratio)` meaning text only: with 50 steps and ratio 0.8
/// the bound is 9.999999999999998, so steps 0..=9 are text only. Ratio 0 never injects, ratio 1
/// injects from the first step.
pub fn ids_active(step: usize, num_steps: usize, id_injection_ratio: f64) -> bool {
    let text_only = (step as f64) < num_steps as f64 * (1.0 - id_injection_ratio);
    !text_only
}

/// Checks an ID injection ratio given by the user (`name` is the flag or field).
pub fn check_ratio(ratio: f64, name: &str) -> Result<()> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::invalid_input(
            name,
            format!("{ratio} is not in [0, 1]"),
        ));
    }
    Ok(())
}

/// `(tokens, dim)` of a (T, D) or (1, T, D) / (F, 16, D) token tensor.
fn token_rows(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    let shape = t.shape();
    let (tokens, dim) = match shape {
        [tokens, dim] => (*tokens, *dim),
        [batch, tokens, dim] => (batch * tokens, *dim),
        _ => {
            return Err(Error::invalid_input(
                name,
                format!("expected (tokens, dim) or (batch, tokens, dim), got {shape:?}"),
            ))
        }
    };
    if !matches!(t.dtype(), DType::Float32 | DType::Float16) {
        return Err(Error::invalid_input(
            name,
            format!("expected float32 or float16, got {}", t.dtype()),
        ));
    }
    Ok((tokens, dim))
}

/// The token rows of `parts` (one float dtype, checked by [`token_rows`]) one after the other,
/// as (batch, tokens, dim).
fn stack(parts: &[&Tensor], batch: usize, tokens: usize, dim: usize) -> Result<Tensor> {
    match parts[0].dtype() {
        DType::Float16 => stack_as::<half::f16>(parts, batch, tokens, dim),
        _ => stack_as::<f32>(parts, batch, tokens, dim),
    }
}

fn stack_as<T: Element>(
    parts: &[&Tensor],
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<Tensor> {
    let fail = || {
        Error::graph(
            "splice",
            format!("token tensors do not stack into ({batch}, {tokens}, {dim})"),
        )
    };
    // Each part viewed as (rows, dim) without a copy; the rows joined on axis 0.
    let rows = parts
        .iter()
        .map(|p| {
            let view = p.array::<T>().ok_or_else(fail)?.view();
            view.into_shape_with_order(IxDyn(&[p.len() / dim.max(1), dim]))
                .map_err(|_| fail())
        })
        .collect::<Result<Vec<_>>>()?;
    let joined = tensor::concatenate(0, &rows).ok_or_else(fail)?;
    Tensor::from_array(joined).into_shape(&[batch, tokens, dim])
}

/// The spliced sequence (1, 77 + 16F, D): `text` (77 x D) then `id_tokens` (16F x D, people in
/// order).
pub fn splice(text: &Tensor, id_tokens: &Tensor) -> Result<Tensor> {
    let (t, d) = token_rows(text, "text embeddings")?;
    let (n, d_ids) = token_rows(id_tokens, "ID tokens")?;
    if t != TEXT_TOKENS {
        return Err(Error::invalid_input(
            "text embeddings",
            format!("expected {TEXT_TOKENS} tokens, got {t}"),
        ));
    }
    if n == 0 || n % ID_TOKENS_PER_PERSON != 0 {
        return Err(Error::invalid_input(
            "ID tokens",
            format!("expected a positive multiple of {ID_TOKENS_PER_PERSON} tokens, got {n}"),
        ));
    }
    if d != d_ids || text.dtype() != id_tokens.dtype() {
        return Err(Error::invalid_input(
            "ID tokens",
            format!(
                "{} x {d_ids} does not match the text embeddings' {} x {d}",
                id_tokens.dtype(),
                text.dtype()
            ),
        ));
    }
    stack(&[text, id_tokens], 1, t + n, d)
}

/// The batched `[uncond, cond]` encoder hidden states for both ID schedule phases.
#[derive(Debug, Clone)]
pub struct EncoderStates {
    text_only: Tensor,
    full: Tensor,
}

impl EncoderStates {
    /// `negative_text`/`text`: (77, D); `negative_ids`/`ids`: (F, 16, D) or (1, 16F, D), where
    /// `negative_ids` is the ID mapper's output for zero embeddings.
    pub fn new(
        negative_text: &Tensor,
        text: &Tensor,
        negative_ids: &Tensor,
        ids: &Tensor,
    ) -> Result<Self> {
        let uncond = splice(negative_text, negative_ids)?;
        let cond = splice(text, ids)?;
        if uncond.shape() != cond.shape() || uncond.dtype() != cond.dtype() {
            return Err(Error::invalid_input(
                "negative prompt embeddings",
                format!(
                    "{} {:?} does not match the prompt's {} {:?}",
                    uncond.dtype(),
                    uncond.shape(),
                    cond.dtype(),
                    cond.shape()
                ),
            ));
        }
        let (tokens, dim) = (cond.shape()[1], cond.shape()[2]);
        let full = stack(&[&uncond, &cond], 2, tokens, dim)?;
        let text_only = stack(&[negative_text, text], 2, TEXT_TOKENS, dim)?;
        Ok(EncoderStates { text_only, full })
    }

    /// (2, 77, D): both halves without ID tokens.
    pub fn text_only(&self) -> &Tensor {
        &self.text_only
    }

    /// (2, 77 + 16F, D): both halves with ID tokens.
    pub fn full(&self) -> &Tensor {
        &self.full
    }

    /// What the UNet and the ControlNet get at `step` of `num_steps`.
    pub fn for_step(&self, step: usize, num_steps: usize, id_injection_ratio: f64) -> &Tensor {
        if ids_active(step, num_steps, id_injection_ratio) {
            &self.full
        } else {
            &self.text_only
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First step that sees the ID tokens.
    fn first_active(n: usize, ratio: f64) -> usize {
        (0..n).find(|&i| ids_active(i, n, ratio)).unwrap_or(n)
    }

    // Expected: `i < len(timesteps) * (1 - id_injection_ratio)` of ID-Patch's SDXL pipeline,
    // evaluated by CPython in float64 for 64 step counts x 22 ratios (tests/reference/splice.py,
    // tests/data/splice/schedule.json). Among them: 50 steps at ratio 0.8 give
    // 50 * 0.19999999999999996 = 9.999999999999998, so step 10 is the first with ID tokens.
    #[test]
    fn schedule_boundaries_match_the_reference_float_comparison() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/splice/schedule.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (made by tests/reference/splice.py)",
                path.display()
            )
        });
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let steps: Vec<usize> = reference["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() as usize)
            .collect();
        let table = reference["first_active"].as_object().unwrap();
        assert_eq!(table.len(), 22);
        let mut checked = 0;
        for (ratio_text, firsts) in table {
            // Parsed as the CLI parses --id-injection-ratio.
            let ratio: f64 = ratio_text.parse().unwrap();
            for (&n, first) in steps.iter().zip(firsts.as_array().unwrap()) {
                let first = first.as_u64().unwrap() as usize;
                assert_eq!(
                    first_active(n, ratio),
                    first,
                    "{n} steps, ratio {ratio_text}"
                );
                // Text only before the boundary, ID tokens from it on: never back.
                assert!((first..n).all(|i| ids_active(i, n, ratio)));
                checked += 1;
            }
        }
        assert_eq!(checked, 64 * 22);
        assert_eq!(first_active(50, 0.8), 10);
    }

    #[test]
    fn ratio_outside_unit_interval_is_rejected() {
        assert!(check_ratio(0.8, "--id-injection-ratio").is_ok());
        let err = check_ratio(1.5, "--id-injection-ratio")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--id-injection-ratio: 1.5 is not in [0, 1]");
        assert!(check_ratio(f64::NAN, "--id-injection-ratio").is_err());
    }

    fn filled(shape: Vec<usize>, base: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|i| base + i as f32).collect()).unwrap()
    }

    // Expected rows: the reference's concatenation in torch 2.11 on the same filled tensors,
    //   cond = torch.cat([text[None], ids.reshape(1, -1, 3)], dim=1)
    //   uncond = torch.cat([neg_text, neg_ids], dim=1); full = torch.cat([uncond, cond])
    //   full[0, 0], full[0, 77], full[1, 76], full[1, 77], full[1, 93], full[1, 108]
    //   -> [10000, 10001, 10002] [20000, 20001, 20002] [228, 229, 230] [1000, 1001, 1002]
    //      [1048, 1049, 1050] [1093, 1094, 1095]
    // with text = arange(77 * 3).reshape(77, 3), ids = 1000 + arange(96).reshape(2, 16, 3),
    // neg_text = 10000 + arange(231).reshape(1, 77, 3), neg_ids = 20000 + arange(96).reshape(1, 32, 3).
    #[test]
    fn sequences_are_text_then_people_in_order() {
        let d = 3;
        let text = filled(vec![77, d], 0.0);
        let neg_text = filled(vec![1, 77, d], 10_000.0);
        let ids = filled(vec![2, 16, d], 1_000.0); // person 0 rows 0..16, person 1 rows 16..32
        let neg_ids = filled(vec![1, 32, d], 20_000.0);
        let states = EncoderStates::new(&neg_text, &text, &neg_ids, &ids).unwrap();

        let full = states.full();
        assert_eq!(full.shape(), [2, 77 + 32, d]);
        let v = full.as_f32().unwrap();
        let row = |b: usize, t: usize| &v[(b * 109 + t) * d..][..d];
        assert_eq!(row(0, 0), [10_000.0, 10_001.0, 10_002.0]); // negative text first
        assert_eq!(row(0, 77), [20_000.0, 20_001.0, 20_002.0]); // then zero-embedding ID tokens
        assert_eq!(row(1, 76), [228.0, 229.0, 230.0]); // last text token
        assert_eq!(row(1, 77), [1_000.0, 1_001.0, 1_002.0]); // person 0's first ID token
        assert_eq!(row(1, 77 + 16), [1_048.0, 1_049.0, 1_050.0]); // person 1's first ID token
        assert_eq!(row(1, 108), [1_093.0, 1_094.0, 1_095.0]);

        let text_only = states.for_step(0, 50, 0.8);
        assert_eq!(text_only.shape(), [2, 77, d]);
        let t = text_only.as_f32().unwrap();
        assert_eq!(&t[..3], [10_000.0, 10_001.0, 10_002.0]);
        assert_eq!(&t[77 * d..77 * d + 3], [0.0, 1.0, 2.0]);
        assert_eq!(states.for_step(10, 50, 0.8).shape(), [2, 109, d]);
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let text = filled(vec![77, 4], 0.0);
        assert!(splice(&filled(vec![76, 4], 0.0), &filled(vec![1, 16, 4], 0.0)).is_err());
        assert!(splice(&text, &filled(vec![1, 15, 4], 0.0)).is_err());
        assert!(splice(&text, &filled(vec![1, 16, 5], 0.0)).is_err());
        let err = EncoderStates::new(
            &text,
            &text,
            &filled(vec![1, 16, 4], 0.0),
            &filled(vec![2, 16, 4], 0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("negative prompt embeddings:"), "{err}");
    }
}
