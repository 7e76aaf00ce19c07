//! Wall time of each pipeline stage ([`Timings`]), filled in by the stages of
//! [`crate::pipeline`] as a generation passes through them, and the timing table `generate`
//! prints.

use std::time::Duration;

/// Wall time of each stage. Graph stages include the backend's plan building on first use.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Reading face photos, alignment, ArcFace input (Rust).
    pub faces: Duration,
    /// Both tokenizers on both prompts (Rust).
    pub tokenize: Duration,
    /// Loading every graph.
    pub load_graphs: Duration,
    /// Both text encoders.
    pub text_encoders: Duration,
    /// ArcFace, patch_proj and prompt_proj (both calls).
    pub id_graphs: Duration,
    /// Skeleton, patch compositing and token splicing (Rust).
    pub condition: Duration,
    /// ControlNet over the whole loop.
    pub controlnet: Duration,
    /// UNet over the whole loop, with the uploads of the denoiser inputs (constants once per
    /// generation, `sample` and `timestep` per step).
    pub unet: Duration,
    /// Part of `controlnet` + `unet`: their first run at each sequence length, which includes a
    /// backend's per-shape preparation (tract optimises a plan for each new input shape).
    pub first_runs: Duration,
    /// Initial noise, model-input scaling, CFG and scheduler steps (Rust).
    pub scheduler: Duration,
    pub vae_decode: Duration,
    /// Float image to 8-bit RGB (Rust).
    pub to_rgb: Duration,
    /// ControlNet calls, and steps the control guidance window skipped.
    pub controlnet_calls: usize,
    pub controlnet_skipped: usize,
    /// Median ControlNet call after its first run per sequence length (None without one).
    pub controlnet_call: Option<Duration>,
}

impl Timings {
    /// Time spent in code this crate owns (everything but graph loading and graph runs).
    pub fn rust_owned(&self) -> Duration {
        self.faces + self.tokenize + self.condition + self.scheduler + self.to_rgb
    }

    /// ControlNet time the control guidance window saved: skipped steps times the median call
    /// (None when no step was skipped or no call was timed after its first run).
    pub fn controlnet_saved(&self) -> Option<Duration> {
        let skipped = u32::try_from(self.controlnet_skipped)
            .ok()
            .filter(|n| *n > 0)?;
        self.controlnet_call.map(|call| call * skipped)
    }

    /// Every stage summed.
    pub fn stages(&self) -> Duration {
        self.rust_owned()
            + self.load_graphs
            + self.text_encoders
            + self.id_graphs
            + self.controlnet
            + self.unet
            + self.vae_decode
    }

    /// One line per stage (name, seconds, percentage of `total`), then the Rust-owned share.
    pub fn summary(&self, total: Duration) -> String {
        let rows = [
            ("faces (decode, align)", self.faces),
            ("tokenize", self.tokenize),
            ("load graphs", self.load_graphs),
            ("text encoders", self.text_encoders),
            ("arcface + projections", self.id_graphs),
            ("condition + splicing", self.condition),
            ("controlnet (all steps)", self.controlnet),
            ("unet (all steps)", self.unet),
            ("first runs (in cn + unet)", self.first_runs),
            ("scheduler + CFG", self.scheduler),
            ("vae decode", self.vae_decode),
            ("to RGB8", self.to_rgb),
        ];
        let total_s = total.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut out = String::from("stage                          seconds      share\n");
        for (name, d) in rows {
            out.push_str(&format!(
                "{name:<28} {:>10.4} {:>9.1}%\n",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / total_s
            ));
        }
        let other = total.saturating_sub(self.stages());
        out.push_str(&format!(
            "{:<28} {:>10.4} {:>9.1}%\n",
            "other (I/O, setup)",
            other.as_secs_f64(),
            100.0 * other.as_secs_f64() / total_s
        ));
        out.push_str(&format!("{:<28} {:>10.4}\n", "total", total.as_secs_f64()));
        if self.controlnet_skipped > 0 {
            let steps = self.controlnet_skipped + self.controlnet_calls;
            out.push_str(&format!(
                "controlnet skipped on {} of {steps} steps (control guidance window): {}\n",
                self.controlnet_skipped,
                match (self.controlnet_saved(), self.controlnet_call) {
                    (Some(saved), Some(call)) => format!(
                        "about {:.4} s saved at {:.3} ms per call",
                        saved.as_secs_f64(),
                        call.as_secs_f64() * 1e3
                    ),
                    _ => "no call after its first run to measure the saving by".into(),
                }
            ));
        }
        out.push_str(&format!(
            "Rust-owned (faces, tokenize, condition, scheduler + CFG, to RGB8): {:.4} s, {:.2}% of total",
            self.rust_owned().as_secs_f64(),
            100.0 * self.rust_owned().as_secs_f64() / total_s
        ));
        out
    }
}
