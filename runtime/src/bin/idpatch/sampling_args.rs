//! The generation settings `generate` and `bench --pipeline` share, each under its short name
//! and under diffusers' parameter name (`--steps` / `--num-inference-steps`, `--guidance` /
//! `--guidance-scale`, `--controlnet-scale` / `--controlnet-conditioning-scale`). Either
//! spelling may be given, not both; errors name the flag as the user typed it.

use idpatch::Error;

#[derive(clap::Args, Debug, Default)]
pub struct SamplingArgs {
    /// Denoising steps, 1 to 1000 [default: 50].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// diffusers' name for --steps.
    #[arg(long, value_name = "N", conflicts_with = "steps")]
    num_inference_steps: Option<usize>,
    /// Classifier-free guidance scale, 0 to 100 [default: 5.5]. Above 1 the graphs run on
    /// [negative, prompt]; at 1 or below on the prompt alone (batch 1, half the work; no
    /// --negative-prompt then).
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// diffusers' name for --guidance.
    #[arg(
        long,
        value_name = "G",
        allow_negative_numbers = true,
        conflicts_with = "guidance"
    )]
    guidance_scale: Option<f64>,
    /// ControlNet conditioning scale, 0 to 10 [default: 0.8].
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    controlnet_scale: Option<f64>,
    /// diffusers' name for --controlnet-scale.
    #[arg(
        long,
        value_name = "S",
        allow_negative_numbers = true,
        conflicts_with = "controlnet_scale"
    )]
    controlnet_conditioning_scale: Option<f64>,
}

/// (short flag, diffusers' flag, whether the diffusers spelling was typed).
type Spelling = (&'static str, &'static str, bool);

impl SamplingArgs {
    /// The steps given under either name.
    pub fn steps(&self) -> Option<usize> {
        self.steps.or(self.num_inference_steps)
    }

    /// The guidance scale given under either name.
    pub fn guidance(&self) -> Option<f64> {
        self.guidance.or(self.guidance_scale)
    }

    /// The ControlNet conditioning scale given under either name.
    pub fn controlnet_scale(&self) -> Option<f64> {
        self.controlnet_scale.or(self.controlnet_conditioning_scale)
    }

    /// The flags given, as typed, with the value's short name: `(typed flag, given)`.
    pub fn given(&self) -> [(&'static str, bool); 3] {
        self.spellings().map(|(short, long, typed_long)| {
            let given = match short {
                "--steps" => self.steps().is_some(),
                "--guidance" => self.guidance().is_some(),
                _ => self.controlnet_scale().is_some(),
            };
            (if typed_long { long } else { short }, given)
        })
    }

    fn spellings(&self) -> [Spelling; 3] {
        [
            (
                "--steps",
                "--num-inference-steps",
                self.num_inference_steps.is_some(),
            ),
            (
                "--guidance",
                "--guidance-scale",
                self.guidance_scale.is_some(),
            ),
            (
                "--controlnet-scale",
                "--controlnet-conditioning-scale",
                self.controlnet_conditioning_scale.is_some(),
            ),
        ]
    }

    /// `err` with every short flag name the library used (`--steps: 0 is not between 1 and
    /// 1000`) replaced by diffusers' name where the user typed that one.
    pub fn as_typed(&self, err: anyhow::Error) -> anyhow::Error {
        let renames: Vec<(&str, &str)> = self
            .spellings()
            .into_iter()
            .filter(|(.., typed_long)| *typed_long)
            .map(|(short, long, _)| (short, long))
            .collect();
        if renames.is_empty() {
            return err;
        }
        renames
            .into_iter()
            .fold(err, |err, (short, long)| rename_flag(err, short, long))
    }
}

/// `err`, when it is an input error, with the flag `from` named `to` (in the input and the
/// reason), for a flag the user typed under its other name.
pub fn rename_flag(err: anyhow::Error, from: &str, to: &str) -> anyhow::Error {
    match err.downcast::<Error>() {
        Ok(Error::InvalidInput { input, reason }) => Error::invalid_input(
            replace_flag(&input, from, to),
            replace_flag(&reason, from, to),
        )
        .into(),
        Ok(other) => other.into(),
        Err(err) => err,
    }
}

/// `text` with the flag `from` replaced by `to` where it stands as a whole flag (`--steps`, not
/// the start of `--steps-per-x`).
fn replace_flag(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
        out.push_str(&rest[..at]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_replaced_only_whole() {
        assert_eq!(
            replace_flag(
                "--guidance 1 is not above 1; raise --guidance or --guidance-x",
                "--guidance",
                "--guidance-scale"
            ),
            "--guidance-scale 1 is not above 1; raise --guidance-scale or --guidance-x"
        );
    }

    #[test]
    fn errors_name_the_spelling_typed() {
        let args = SamplingArgs {
            num_inference_steps: Some(0),
            guidance: Some(0.5),
            ..SamplingArgs::default()
        };
        let err =
            args.as_typed(Error::invalid_input("--steps", "0 is not between 1 and 1000").into());
        assert_eq!(
            err.to_string(),
            Error::invalid_input("--num-inference-steps", "0 is not between 1 and 1000")
                .to_string()
        );
        // --guidance was typed as such: left alone.
        let err = args.as_typed(Error::invalid_input("--guidance", "x").into());
        assert!(err.to_string().starts_with("--guidance: "), "{err}");
        assert_eq!(args.steps(), Some(0));
        assert_eq!(args.given()[0], ("--num-inference-steps", true));
        assert_eq!(args.given()[2], ("--controlnet-scale", false));
    }
}
