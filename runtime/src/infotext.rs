//! AUTOMATIC1111's `parameters` PNG text ("infotext"), so that stable-diffusion-webui's PNG Info
//! tab, ComfyUI and image browsers show how an image was made.
//!
//! The text is A1111's layout: the prompt, then `Negative prompt: ...` on its own line when
//! there is one, then one line of `Key: value` pairs joined by `", "`:
//!
//! ```text
//! three friends in a park
//! Negative prompt: blurry
//! Steps: 50, Sampler: Euler, CFG scale: 5.5, Seed: 7, Size: 896x1152, Model hash: 0123456789, Model: full-fp16, ...
//! ```
//!
//! A1111's own keys come first (`Steps`, `Sampler`, `Schedule type` when the sigmas are
//! Karras', `CFG scale`, `Seed`, `Size` as width x height, `Model hash`, `Model`), then
//! ID-Patch's (`ControlNet scale`, `Control guidance start`, `Control guidance end`,
//! `ID injection ratio`, `People`, `Backend`, `Version`). A value holding `,`, `:` or a newline
//! is written as a JSON string, as A1111 quotes it; A1111's parser reads the last line as the
//! parameters only when it holds at least three pairs, which it always does here.
//!
//! Samplers carry A1111's names (`Euler`, `Euler a`, `DDIM`, `DPM++ 2M`); Karras sigmas are
//! written as A1111 1.9 and later write them, `Schedule type: Karras` beside the sampler
//! (before 1.9 the suffix was part of the name, `DPM++ 2M Karras`, which 1.9 still reads).
//! `Model hash` is the first 10 hex digits of the set's `model_set_digest`: A1111 writes the
//! first 10 of its checkpoint file's sha256 there, and a set has no single file, so the digest
//! naming all of them stands in.

use crate::pipeline::Job;
use crate::scheduler::SchedulerKind;

/// What a generated PNG records about the run beside the parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The set's name ([`crate::manifest::ModelSet::name`]).
    pub set_name: String,
    /// [`crate::manifest::ModelSet::model_set_digest`].
    pub digest: String,
    /// `verified` or `skipped`.
    pub checksums: String,
    /// The backend that ran, as [`crate::backend::Backend::name`] gives it.
    pub backend: String,
}

/// The text chunks (key, value) of a generated PNG, in a fixed order: AUTOMATIC1111's
/// `parameters` ([`Infotext`]), then every generation parameter, the model set and the software
/// under idpatch's own keys. `init_noise` names the file the initial noise came from, when it
/// did not come from the seed. `idpatch generate` and `idpatch serve` both write these, so the
/// same request and seed give the same PNG from either.
pub fn png_text(
    job: &Job,
    run: &RunRecord,
    init_noise: Option<&str>,
) -> Vec<(&'static str, String)> {
    let p = &job.params;
    let scheduler = job.scheduler.kind();
    let infotext = Infotext {
        prompt: &p.prompt,
        negative_prompt: &p.negative_prompt,
        steps: p.steps,
        scheduler,
        karras: job.scheduler.config().use_karras_sigmas,
        guidance: p.guidance,
        seed: p.seed,
        width: job.layout.width,
        height: job.layout.height,
        model_set_digest: &run.digest,
        model: &run.set_name,
        controlnet_scale: p.controlnet_scale,
        control_guidance_start: p.control_guidance_start,
        control_guidance_end: p.control_guidance_end,
        id_injection_ratio: p.id_injection_ratio,
        people: job.layout.people.len(),
        backend: &run.backend,
    };
    let mut text = vec![
        ("parameters", infotext.parameters()),
        ("prompt", p.prompt.clone()),
        ("negative_prompt", p.negative_prompt.clone()),
        ("seed", p.seed.to_string()),
        ("steps", p.steps.to_string()),
        ("guidance", p.guidance.to_string()),
        ("controlnet_scale", p.controlnet_scale.to_string()),
        ("id_injection_ratio", p.id_injection_ratio.to_string()),
        (
            "control_guidance_start",
            p.control_guidance_start.to_string(),
        ),
        ("control_guidance_end", p.control_guidance_end.to_string()),
        ("scheduler", scheduler.name().to_string()),
        ("model_set", run.set_name.clone()),
        ("model_set_digest", run.digest.clone()),
        ("model_set_checksums", run.checksums.clone()),
        ("backend", run.backend.clone()),
        ("software", format!("idpatch {}", env!("CARGO_PKG_VERSION"))),
    ];
    if let Some(path) = init_noise {
        text.push(("init_noise", path.to_string()));
    }
    if p.bf16_positions {
        text.push(("bf16_positions", "true".to_string()));
    }
    text
}

/// What one generation records in its `parameters` text.
#[derive(Debug, Clone, PartialEq)]
pub struct Infotext<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    /// The scheduler used Karras sigmas (`use_karras_sigmas`).
    pub karras: bool,
    pub guidance: f64,
    pub seed: u64,
    /// Output size in pixels.
    pub width: u32,
    pub height: u32,
    /// The set's `model_set_digest` (64 hex digits); its first 10 are written.
    pub model_set_digest: &'a str,
    /// The set's name.
    pub model: &'a str,
    pub controlnet_scale: f64,
    pub control_guidance_start: f64,
    pub control_guidance_end: f64,
    pub id_injection_ratio: f64,
    pub people: usize,
    /// What ran (`tract`, `ort-cpu`, ...).
    pub backend: &'a str,
}

/// A1111's sampler name for a scheduler (its k-diffusion and timestep samplers' labels).
pub fn a1111_sampler(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Euler => "Euler",
        SchedulerKind::EulerAncestral => "Euler a",
        SchedulerKind::Ddim => "DDIM",
        SchedulerKind::DpmSolverMultistep => "DPM++ 2M",
    }
}

/// A value as A1111 writes it: as is, or as a JSON string when it holds `,`, `:` or a newline.
fn quoted(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::Value::from(value).to_string()
    } else {
        value.to_string()
    }
}

impl Infotext<'_> {
    /// The `key: value` pairs of the parameters line, in order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", a1111_sampler(self.scheduler).to_string()),
        ];
        if self.karras {
            pairs.push(("Schedule type", "Karras".to_string()));
        }
        let hash: String = self.model_set_digest.chars().take(10).collect();
        pairs.extend([
            ("CFG scale", self.guidance.to_string()),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model hash", hash),
            ("Model", self.model.to_string()),
            ("ControlNet scale", self.controlnet_scale.to_string()),
            (
                "Control guidance start",
                self.control_guidance_start.to_string(),
            ),
            (
                "Control guidance end",
                self.control_guidance_end.to_string(),
            ),
            ("ID injection ratio", self.id_injection_ratio.to_string()),
            ("People", self.people.to_string()),
            ("Backend", self.backend.to_string()),
            ("Version", format!("idpatch {}", env!("CARGO_PKG_VERSION"))),
        ]);
        pairs
    }

    /// The whole `parameters` text (see the module documentation), without leading or trailing
    /// whitespace, as A1111 trims it.
    pub fn parameters(&self) -> String {
        let line: Vec<String> = self
            .pairs()
            .into_iter()
            .map(|(key, value)| format!("{key}: {}", quoted(&value)))
            .collect();
        let mut text = self.prompt.to_string();
        if !self.negative_prompt.is_empty() {
            text += &format!("\nNegative prompt: {}", self.negative_prompt);
        }
        text += "\n";
        text += &line.join(", ");
        text.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected: A1111's quote() in modules/infotext_utils.py writes json.dumps(value,
    // ensure_ascii=False) when the value holds ',', ':' or '\n': json.dumps("a, b") -> "\"a, b\"".
    #[test]
    fn values_with_separators_are_quoted() {
        assert_eq!(quoted("tiny"), "tiny");
        assert_eq!(quoted("a, b"), "\"a, b\"");
        assert_eq!(quoted("c:d"), "\"c:d\"");
        assert_eq!(quoted("x\ny"), "\"x\\ny\"");
    }
}
