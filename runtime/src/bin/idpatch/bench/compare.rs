//! `bench --compare A B`: the two configurations, each a backend label run on --models or a set
//! directory run on --backend.

use std::path::Path;

use idpatch::manifest::{Checksums, ModelSet};
use idpatch::Error;

use super::{profile, Args, Config};
use crate::backend_args::Provider;

/// The two configurations of `--compare`. A backend label sets the backend and provider of its
/// configuration, so `--backend` and `--ep` must then serve a set-directory label; ONNX Runtime
/// flags go to the configurations that honour them, and one that neither honours is an error.
pub(super) fn configs(args: &Args) -> anyhow::Result<Vec<Config>> {
    let mut planned = Vec::new();
    for label in &args.compare {
        if let Some(ep) = label.strip_prefix("ort-") {
            Provider::parse(ep).map_err(|e| match e {
                Error::InvalidInput { reason, .. } => Error::invalid_input("--compare", reason),
                other => other,
            })?;
        }
        let (asked, backend_label) = if let Some(asked) = args.backend.with_label(label) {
            (asked, true)
        } else if Path::new(label).is_dir() {
            (args.backend.clone(), false)
        } else {
            return Err(Error::invalid_input(
                "--compare",
                format!(
                    "{label:?} is neither a backend (tract, ort-cpu, ort-cuda, ort-tensorrt, \
                     ort-auto) nor a graph set directory"
                ),
            )
            .into());
        };
        let (config_args, skipped) = asked.split_unhonoured()?;
        planned.push((label, backend_label, config_args, skipped));
    }
    if planned
        .iter()
        .all(|(.., backend_label, _, _)| *backend_label)
    {
        let given = [
            ("--backend", args.backend.backend.is_some()),
            ("--ep", args.backend.ep.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(Error::invalid_input(
                *flag,
                "--compare names the backend of both configurations",
            )
            .into());
        }
    }
    if let Some(flag) = planned[0].3.iter().find(|f| planned[1].3.contains(f)) {
        let names: Vec<&str> = planned.iter().map(|p| p.0.as_str()).collect();
        return Err(Error::invalid_input(
            *flag,
            format!(
                "neither compared configuration ({}) can honour it",
                names.join(", ")
            ),
        )
        .into());
    }
    let checksums = Checksums::from_skip_flag(args.skip_checksums);
    for (label, _, config_args, _) in &planned {
        profile::check_backend(args, config_args, label)?;
    }
    let mut configs = Vec::new();
    for ((label, backend_label, config_args, _), slot) in planned.into_iter().zip(["a", "b"]) {
        let config_args = profile::with_profiler(args, config_args, label, Some(slot))?;
        let dir = if backend_label {
            &args.models
        } else {
            Path::new(label)
        };
        configs.push(Config {
            label: label.clone(),
            backend_label,
            backend: config_args.make()?,
            args: config_args,
            set: ModelSet::open(dir, checksums)?,
        });
    }
    Ok(configs)
}
