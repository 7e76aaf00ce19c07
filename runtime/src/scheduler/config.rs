//! `scheduler_config.json` as diffusers writes it, reduced to the options this runtime honours.
//!
//! Each scheduler class reads its own subset of keys and has its own defaults (diffusers'
//! `from_config`): a key the chosen class does not read is ignored, whatever its value, and a
//! value outside what is supported here is an error naming the key.
//!
//! Values are bounded here, for a `--config` file and a set's manifest alike: at most
//! [`MAX_TRAIN_TIMESTEPS`] training timesteps (the schedule tables are allocated from it), betas
//! strictly between 0 and 1, `steps_offset` within the training timesteps, and a noise schedule
//! whose every training sigma is positive and finite (a zero sigma divides, an infinite one
//! comes from cumulative alphas that underflow).

use std::str::FromStr;

use serde_json::{Map, Value};

use super::SchedulerKind;
use crate::{Error, Result};

/// Most training timesteps a configuration may give (diffusers' SDXL and SD configs use 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;
/// Largest scheduler config file read, in bytes (diffusers' are under 1 KB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The `scheduler/scheduler_config.json` of stabilityai/stable-diffusion-xl-base-1.0, the
/// configuration ID-Patch runs with.
pub const SDXL_BASE_CONFIG: &str = r#"{
  "_class_name": "EulerDiscreteScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null,
  "use_karras_sigmas": false
}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// A resolved scheduler configuration: every field holds the value diffusers would use for
/// [`SchedulerConfig::kind`], whether it came from the file or from that class's default.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    /// Euler and DPM-Solver only.
    pub use_karras_sigmas: bool,
    /// Euler and DPM-Solver only.
    pub final_sigmas_type: FinalSigmas,
    /// DDIM only.
    pub set_alpha_to_one: bool,
    /// DDIM only.
    pub clip_sample: bool,
    /// DDIM only.
    pub clip_sample_range: f64,
    /// DPM-Solver only: 1, 2 or 3.
    pub solver_order: usize,
    /// DPM-Solver only.
    pub solver_type: SolverType,
    /// DPM-Solver only.
    pub lower_order_final: bool,
    /// DPM-Solver only.
    pub euler_at_final: bool,
}

impl Default for SchedulerConfig {
    /// The SDXL base configuration with its own class (Euler discrete).
    fn default() -> Self {
        SchedulerConfig::from_json_str(SDXL_BASE_CONFIG, None, "built-in SDXL scheduler config")
            .expect("the built-in SDXL scheduler config is valid")
    }
}

impl SchedulerConfig {
    /// The SDXL base configuration, read as `kind` when given (like diffusers'
    /// `<Class>.from_config(sdxl_config)`).
    pub fn sdxl(kind: Option<SchedulerKind>) -> Self {
        SchedulerConfig::from_json_str(SDXL_BASE_CONFIG, kind, "built-in SDXL scheduler config")
            .expect("the built-in SDXL scheduler config is valid for every scheduler kind")
    }

    /// Reads a diffusers scheduler config file (at most [`MAX_CONFIG_BYTES`]); `kind` overrides
    /// its `_class_name`.
    pub fn from_file(path: &std::path::Path, kind: Option<SchedulerKind>) -> Result<Self> {
        let text = crate::fsutil::read_text_limited(path, MAX_CONFIG_BYTES, "scheduler config")?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        SchedulerConfig::from_json_str(&text, kind, &name)
    }

    /// Parses config JSON text. `source` names the file in error messages; `kind` overrides the
    /// file's `_class_name` (a missing `_class_name` means Euler discrete).
    pub fn from_json_str(text: &str, kind: Option<SchedulerKind>, source: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_non_finite_literals(text))
            .map_err(|e| Error::invalid_input(source, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Error::invalid_input(source, "must be a JSON object"));
        };
        SchedulerConfig::from_map(&map, kind, source)
    }

    /// Builds a configuration from an already parsed JSON object.
    pub fn from_map(
        map: &Map<String, Value>,
        kind: Option<SchedulerKind>,
        source: &str,
    ) -> Result<Self> {
        let keys = Keys { map, source };
        let kind = match kind {
            Some(kind) => kind,
            None => Self::kind_from_class_name(&keys)?,
        };
        let mut config = Self::common_keys(&keys, kind)?;
        if matches!(
            kind,
            SchedulerKind::Euler | SchedulerKind::DpmSolverMultistep
        ) {
            config.sigma_keys(&keys)?;
        }
        config.kind_keys(&keys)?;
        check_noise_levels(&config, &keys)?;
        Ok(config)
    }

    /// The kind `_class_name` names (Euler when absent).
    fn kind_from_class_name(keys: &Keys) -> Result<SchedulerKind> {
        match keys.string("_class_name")? {
            None => Ok(SchedulerKind::Euler),
            Some(name) => SchedulerKind::from_class_name(&name).ok_or_else(|| {
                keys.error(
                    "_class_name",
                    format!(
                        "unsupported scheduler class {name:?} (expected one of {})",
                        SchedulerKind::ALL
                            .iter()
                            .map(|k| k.class_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }),
        }
    }

    /// The keys every kind reads (training schedule, spacing, offset, prediction type); the
    /// kind-specific fields keep diffusers' defaults.
    fn common_keys(keys: &Keys, kind: SchedulerKind) -> Result<Self> {
        use SchedulerKind::*;
        let num_train_timesteps = keys.unsigned("num_train_timesteps")?.unwrap_or(1000);
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps) {
            return Err(keys.error(
                "num_train_timesteps",
                format!("{num_train_timesteps} is not 2 to {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        let beta_start = keys.beta("beta_start")?.unwrap_or(0.0001);
        let beta_end = keys.beta("beta_end")?.unwrap_or(0.02);
        if keys.present("trained_betas") {
            return Err(keys.error("trained_betas", "explicit betas are not supported"));
        }
        keys.require_false("rescale_betas_zero_snr")?;
        let default_spacing = if kind == Ddim { "leading" } else { "linspace" };
        let timestep_spacing = keys.string("timestep_spacing")?;
        let timestep_spacing = match timestep_spacing.as_deref().unwrap_or(default_spacing) {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            "linspace" => TimestepSpacing::Linspace,
            other => {
                return Err(keys.error(
                    "timestep_spacing",
                    format!("{other:?} is not one of leading, trailing, linspace"),
                ))
            }
        };

        Ok(SchedulerConfig {
            kind,
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule: keys.choice(
                "beta_schedule",
                &[
                    ("linear", BetaSchedule::Linear),
                    ("scaled_linear", BetaSchedule::ScaledLinear),
                ],
                BetaSchedule::Linear,
            )?,
            timestep_spacing,
            steps_offset: keys.steps_offset(num_train_timesteps)?,
            prediction_type: keys.choice(
                "prediction_type",
                &[
                    ("epsilon", PredictionType::Epsilon),
                    ("v_prediction", PredictionType::VPrediction),
                ],
                PredictionType::Epsilon,
            )?,
            use_karras_sigmas: false,
            final_sigmas_type: FinalSigmas::Zero,
            set_alpha_to_one: true,
            clip_sample: true,
            clip_sample_range: 1.0,
            solver_order: 2,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
        })
    }

    /// Keys of the kinds that step on a sigma schedule (Euler, DPM-Solver++).
    fn sigma_keys(&mut self, keys: &Keys) -> Result<()> {
        self.use_karras_sigmas = keys.boolean("use_karras_sigmas")?.unwrap_or(false);
        keys.require_false("use_exponential_sigmas")?;
        keys.require_false("use_beta_sigmas")?;
        self.final_sigmas_type = keys.choice(
            "final_sigmas_type",
            &[
                ("zero", FinalSigmas::Zero),
                ("sigma_min", FinalSigmas::SigmaMin),
            ],
            FinalSigmas::Zero,
        )?;
        Ok(())
    }

    /// The keys only one kind reads.
    fn kind_keys(&mut self, keys: &Keys) -> Result<()> {
        use SchedulerKind::*;
        match self.kind {
            Euler => {
                keys.choice("interpolation_type", &[("linear", ())], ())?;
                keys.choice("timestep_type", &[("discrete", ())], ())?;
                for key in ["sigma_min", "sigma_max"] {
                    if keys.present(key) {
                        return Err(keys.error(key, "explicit sigma bounds are not supported"));
                    }
                }
            }
            EulerAncestral => {}
            Ddim => {
                self.set_alpha_to_one = keys.boolean("set_alpha_to_one")?.unwrap_or(true);
                self.clip_sample = keys.boolean("clip_sample")?.unwrap_or(true);
                self.clip_sample_range = keys.number("clip_sample_range")?.unwrap_or(1.0);
                if self.clip_sample_range.is_nan() || self.clip_sample_range <= 0.0 {
                    return Err(keys.error("clip_sample_range", "must be a positive number"));
                }
                keys.require_false("thresholding")?;
            }
            DpmSolverMultistep => {
                keys.require_false("thresholding")?;
                keys.require_false("use_lu_lambdas")?;
                keys.require_false("use_flow_sigmas")?;
                keys.require_false("use_dynamic_shifting")?;
                self.solver_order = keys.unsigned("solver_order")?.unwrap_or(2);
                if !(1..=3).contains(&self.solver_order) {
                    return Err(keys.error("solver_order", "must be 1, 2 or 3"));
                }
                // diffusers maps the names of other solver families onto dpmsolver++ / midpoint.
                keys.choice("algorithm_type", &[("dpmsolver++", ()), ("deis", ())], ())?;
                self.solver_type = keys.choice(
                    "solver_type",
                    &[
                        ("midpoint", SolverType::Midpoint),
                        ("heun", SolverType::Heun),
                        ("logrho", SolverType::Midpoint),
                        ("bh1", SolverType::Midpoint),
                        ("bh2", SolverType::Midpoint),
                    ],
                    SolverType::Midpoint,
                )?;
                self.lower_order_final = keys.boolean("lower_order_final")?.unwrap_or(true);
                self.euler_at_final = keys.boolean("euler_at_final")?.unwrap_or(false);
                if let Some(v) = keys.number("lambda_min_clipped")? {
                    if v != f64::NEG_INFINITY {
                        return Err(keys.error("lambda_min_clipped", "only -Infinity is supported"));
                    }
                }
                if keys.present("variance_type") {
                    return Err(keys.error("variance_type", "learned variances are not supported"));
                }
            }
        }
        Ok(())
    }
}

/// Every training sigma `sqrt((1 - alpha_bar) / alpha_bar)` must be positive and finite: the
/// Euler steps divide by sigma and the Karras and DPM-Solver schedules take its log. Betas that
/// round to 0 in float32 give a zero sigma; large betas over many timesteps drive the float32
/// cumulative product to 0 and the sigma to infinity.
fn check_noise_levels(config: &SchedulerConfig, keys: &Keys) -> Result<()> {
    let alphas_cumprod = super::numeric::alphas_cumprod(config);
    let sigmas = super::numeric::train_sigmas(&alphas_cumprod);
    match sigmas.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        None => Ok(()),
        Some(t) => Err(keys.error(
            "beta_start",
            format!(
                "with beta_end {} ({} over {} timesteps) the noise level at training timestep \
                 {t} is {}; it must be positive and finite",
                config.beta_end,
                match config.beta_schedule {
                    BetaSchedule::Linear => "linear",
                    BetaSchedule::ScaledLinear => "scaled_linear",
                },
                config.num_train_timesteps,
                sigmas[t]
            ),
        )),
    }
}

impl FromStr for SchedulerConfig {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        SchedulerConfig::from_json_str(text, None, "scheduler_config.json")
    }
}

/// Typed access to the config object with errors that name `<file> <key>`.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    source: &'a str,
}

impl Keys<'_> {
    fn error(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::invalid_input(format!("{} {key}", self.source), reason)
    }

    /// A key counts as absent when it is missing or null (diffusers writes nulls for unset options).
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn present(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("expected a string, found {other}"))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(key, format!("expected true or false, found {other}"))),
        }
    }

    fn require_false(&self, key: &str) -> Result<()> {
        if self.boolean(key)? == Some(true) {
            return Err(self.error(key, "only false is supported"));
        }
        Ok(())
    }

    /// A number; the non-finite literals Python's json writes arrive here as strings.
    fn number(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s == NON_FINITE[0].1 => Ok(Some(f64::NEG_INFINITY)),
            Some(Value::String(s)) if s == NON_FINITE[1].1 => Ok(Some(f64::INFINITY)),
            Some(Value::String(s)) if s == NON_FINITE[2].1 => Ok(Some(f64::NAN)),
            Some(other) => Err(self.error(key, format!("expected a number, found {other}"))),
        }
    }

    fn beta(&self, key: &str) -> Result<Option<f64>> {
        let value = self.number(key)?;
        if let Some(v) = value {
            if !(v > 0.0 && v < 1.0) {
                return Err(self.error(key, format!("{v} is not in (0, 1)")));
            }
        }
        Ok(value)
    }

    /// `steps_offset` (default 0) must be a training timestep: 0 to `num_train_timesteps - 1`.
    fn steps_offset(&self, num_train_timesteps: usize) -> Result<i64> {
        let offset = self.integer("steps_offset")?.unwrap_or(0);
        if usize::try_from(offset).map_or(true, |o| o >= num_train_timesteps) {
            return Err(self.error(
                "steps_offset",
                format!(
                    "{offset} is not a training timestep (0 to {})",
                    num_train_timesteps - 1
                ),
            ));
        }
        Ok(offset)
    }

    fn integer(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(self.error(key, format!("expected an integer, found {n}"))),
            },
            Some(other) => Err(self.error(key, format!("expected an integer, found {other}"))),
        }
    }

    fn unsigned(&self, key: &str) -> Result<Option<usize>> {
        match self.integer(key)? {
            None => Ok(None),
            Some(i) => usize::try_from(i)
                .map(Some)
                .map_err(|_| self.error(key, format!("{i} is negative"))),
        }
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)], default: T) -> Result<T> {
        let Some(name) = self.string(key)? else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.error(
                    key,
                    format!(
                        "{name:?} is not supported (expected one of {})",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Python's json module writes non-finite floats as bare `-Infinity`, `Infinity` and `NaN`
/// (diffusers does for `lambda_min_clipped`); they are turned into these strings before parsing.
const NON_FINITE: [(&str, &str); 3] = [
    ("-Infinity", "-Infinity"),
    ("Infinity", "Infinity"),
    ("NaN", "NaN"),
];

fn quote_non_finite_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            if c == '\\' {
                if let Some(escaped) = rest.chars().next() {
                    out.push(escaped);
                    rest = &rest[escaped.len_utf8()..];
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if let Some((literal, quoted)) = NON_FINITE
            .iter()
            .find(|(literal, _)| rest.starts_with(literal))
        {
            out.push('"');
            out.push_str(quoted);
            out.push('"');
            rest = &rest[literal.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match SchedulerConfig::from_json_str(text, None, "c.json") {
            Ok(config) => panic!("{text} accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sizes_and_betas_that_would_break_the_schedule_are_refused() {
        let cases = [
            // 8 PB of f64 tables if it were allocated.
            (
                r#"{"num_train_timesteps": 1000000000000000}"#,
                "c.json num_train_timesteps: 1000000000000000 is not 2 to 100000",
            ),
            (
                r#"{"num_train_timesteps": 1}"#,
                "c.json num_train_timesteps: 1 is not 2 to 100000",
            ),
            (
                r#"{"beta_start": 0.0}"#,
                "c.json beta_start: 0 is not in (0, 1)",
            ),
            (
                r#"{"beta_end": NaN}"#,
                "c.json beta_end: NaN is not in (0, 1)",
            ),
            (
                r#"{"beta_end": -Infinity}"#,
                "c.json beta_end: -inf is not in (0, 1)",
            ),
            (
                r#"{"steps_offset": 1000}"#,
                "c.json steps_offset: 1000 is not a training timestep (0 to 999)",
            ),
            (
                r#"{"steps_offset": -9223372036854775808}"#,
                "c.json steps_offset: -9223372036854775808 is not a training timestep",
            ),
            // float32(1 - 1e-12) == 1: alpha_bar 1, sigma 0 at the first training timestep.
            (
                r#"{"beta_start": 1e-12, "beta_end": 1e-12}"#,
                "c.json beta_start: with beta_end 0.000000000001 (linear over 1000 timesteps) \
                 the noise level at training timestep 0 is 0",
            ),
            // alpha_bar underflows float32 long before 100000 steps of beta 0.9: sigma infinite.
            (
                r#"{"beta_start": 0.9, "beta_end": 0.9, "num_train_timesteps": 100000}"#,
                "is inf; it must be positive and finite",
            ),
        ];
        for (text, needle) in cases {
            let message = error_of(text);
            assert!(
                message.contains(needle),
                "{text}: {needle:?} not in {message:?}"
            );
        }
        // The largest table is built when its noise levels stay finite (the default betas
        // over 100000 steps drive alpha_bar to 0 near step 29333).
        let text = r#"{"num_train_timesteps": 100000, "beta_end": 0.0002}"#;
        let config = SchedulerConfig::from_json_str(text, None, "c.json").unwrap();
        assert_eq!(config.num_train_timesteps, MAX_TRAIN_TIMESTEPS);
    }

    #[test]
    fn non_finite_literals_outside_strings_are_quoted() {
        let text = r#"{"a": -Infinity, "b": "NaN -Infinity", "c": [NaN, Infinity]}"#;
        let value: Value = serde_json::from_str(&quote_non_finite_literals(text)).unwrap();
        assert_eq!(value["a"], "-Infinity");
        assert_eq!(value["b"], "NaN -Infinity");
        assert_eq!(value["c"][0], "NaN");
        assert_eq!(value["c"][1], "Infinity");
    }
}
