//! The text chunks a generated PNG carries: every generation parameter, the model set and the
//! software. `idpatch generate` and `idpatch serve` both build them here, so that the same
//! request and seed give the same PNG file from either.

use crate::pipeline::Params;

/// What the PNG records about the run beside the parameters.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The scheduler that ran ([`crate::scheduler::SchedulerKind::name`]).
    pub scheduler: String,
    /// The model set's name ([`crate::manifest::ModelSet::name`]).
    pub set_name: String,
    /// [`crate::manifest::ModelSet::model_set_digest`].
    pub digest: String,
    /// `verified` or `skipped`.
    pub checksums: String,
    /// The backend that ran, as [`crate::backend::Backend::name`] gives it.
    pub backend: String,
}

/// The PNG text chunks (key, value) of one generation, in a fixed order. `init_noise` is the
/// name of the file the initial noise came from, when it did not come from the seed.
pub fn generation_text(
    p: &Params,
    run: &RunRecord,
    init_noise: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut text = vec![
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
        ("scheduler", run.scheduler.clone()),
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
