//! `idpatch bench --fidelity --compare A B`: how far B's outputs are from A's (an INT8 set
//! against the FP32 set it was made from, say). Per graph, both run on the same inputs (A's
//! goldens, or inputs made up at the size flags) and every output of B is compared with A's:
//! largest absolute and relative error and cosine similarity. Then whole generations, one per
//! seed on the same layout and prompt: cosine similarity of the final latents, PSNR of the 8-bit
//! images, and per person the ArcFace similarity (A's ArcFace graph) of the two images' faces at
//! the person's position ([`idpatch::fidelity::face_similarities`]).

use std::ops::ControlFlow;
use std::process::ExitCode;

use idpatch::backend::{load_checked, to_host_f32, Value};
use idpatch::bench::{golden_inputs, synth_inputs, SynthSize};
use idpatch::fidelity::{
    face_crop_side, face_similarities, output_error, psnr, GenerationFidelity, OutputError,
};
use idpatch::layout::Layout;
use idpatch::manifest::Role;
use idpatch::pipeline::{self, Models, Params, Tokenizers};
use idpatch::{Error, Tensor};
use serde_json::json;

use super::{check_bounds, compare, pipeline_layout, pipeline_params, Args, Config, InputSource};
use crate::output::{note, outln};

/// Most seeds one comparison runs.
const MAX_SEEDS: usize = 1000;

/// Flags `--fidelity` cannot honour, as a usage error naming the first one given.
fn check_flags(args: &Args) -> Result<(), Error> {
    let refused = [
        (args.compare.is_empty(), "--fidelity", "needs --compare A B"),
        (
            args.pipeline,
            "--pipeline",
            "cannot be combined with --fidelity",
        ),
        (
            args.warmup.is_some(),
            "--warmup",
            "does not apply to --fidelity (nothing is timed)",
        ),
        (
            args.runs.is_some(),
            "--runs",
            "does not apply to --fidelity (nothing is timed)",
        ),
    ];
    if let Some((_, flag, why)) = refused.iter().find(|(given, ..)| *given) {
        return Err(Error::invalid_input(*flag, *why));
    }
    super::check_layout_without_size_flags(args)?;
    if let Some(seeds) = args.seeds.filter(|s| !(1..=MAX_SEEDS).contains(s)) {
        return Err(Error::invalid_input(
            "--seeds",
            format!("must be at least 1 and at most {MAX_SEEDS}, got {seeds}"),
        ));
    }
    Ok(())
}

pub(super) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    check_flags(args)?;
    check_bounds(args)?;
    let configs = compare::configs(args)?;
    let names = [configs[0].shown(), configs[1].shown()];
    let roles = Role::parse_list(&args.graphs, "--graphs")?;
    if !args.json {
        outln!(
            "fidelity of {} against {} (the reference)",
            names[1],
            names[0]
        )?;
        outln!(
            "{:<15} {:<18} {:>12} {:>12} {:>11}  inputs",
            "graph",
            "worst output",
            "max abs err",
            "max rel err",
            "min cosine"
        )?;
    }
    for role in roles {
        let (errors, source) = compare_graph(&configs, role, args)?;
        print_graph(args, &names, role, &errors, source)?;
    }
    let generations = compare_generations(&configs, args)?;
    print_generations(args, &names, &generations)
}

/// Both configurations' graph for `role` on the same inputs; B's outputs against A's.
fn compare_graph(
    configs: &[Config],
    role: Role,
    args: &Args,
) -> anyhow::Result<(Vec<OutputError>, &'static str)> {
    let reference = &configs[0].set;
    let size = SynthSize {
        height: args.height.unwrap_or(1024),
        width: args.width.unwrap_or(1024),
        people: args.people.unwrap_or(2),
        sequence: args.sequence,
    };
    let size_given = args.height.is_some() || args.width.is_some() || args.people.is_some();
    let golden = match args.inputs {
        Some(InputSource::Synth) => None,
        _ if size_given || args.sequence.is_some() => None,
        _ => golden_inputs(reference, role)?,
    };
    if golden.is_none() && args.inputs == Some(InputSource::Golden) {
        return Err(reference
            .error(format!(
                "graph {role} has no golden tensors (use --inputs synth)"
            ))
            .into());
    }
    let (tensors, source) = match golden {
        Some(t) => (t, "golden"),
        None => (synth_inputs(reference, role, &size)?, "synth"),
    };
    let mut outputs: Vec<Vec<Tensor>> = Vec::with_capacity(2);
    for config in configs {
        let mut graph = load_checked(config.backend.as_ref(), &config.set, role)?;
        let values: Vec<(String, Value)> = tensors
            .iter()
            .map(|(name, t)| {
                let dtype = graph
                    .io()
                    .inputs
                    .iter()
                    .find(|s| &s.name == name)
                    .map_or(t.dtype(), |s| s.dtype);
                Ok((name.clone(), Value::Host(t.clone().cast(dtype)?)))
            })
            .collect::<anyhow::Result<_>>()?;
        let named: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let out = graph.run(&named)?;
        outputs.push(
            out.into_iter()
                .map(|v| to_host_f32(graph.as_ref(), v))
                .collect::<idpatch::Result<_>>()?,
        );
        config.args.check_resolved(config.backend.as_ref())?;
    }
    let specs = &reference.entry(role)?.outputs;
    let errors = specs
        .iter()
        .zip(outputs[0].iter().zip(&outputs[1]))
        .map(|(spec, (a, b))| output_error(&spec.name, a, b))
        .collect::<idpatch::Result<_>>()?;
    Ok((errors, source))
}

fn print_graph(
    args: &Args,
    names: &[String; 2],
    role: Role,
    errors: &[OutputError],
    source: &str,
) -> anyhow::Result<()> {
    if args.json {
        let line =
            json!({"graph": role.name(), "compare": names, "inputs": source, "outputs": errors});
        return outln!("{line}");
    }
    let worst = errors
        .iter()
        .max_by(|a, b| a.max_rel_err.total_cmp(&b.max_rel_err));
    let min_cosine = errors.iter().map(|e| e.cosine).fold(1.0, f64::min);
    if let Some(w) = worst {
        outln!(
            "{:<15} {:<18} {:>12.3e} {:>12.3e} {:>11.6}  {source}",
            role.name(),
            w.name,
            w.max_abs_err,
            w.max_rel_err,
            min_cosine
        )?;
    }
    Ok(())
}

/// The generations of a comparison and what they ran with.
struct Generations {
    layout: Layout,
    params: Params,
    results: Vec<GenerationFidelity>,
    /// Side of the face crops, pixels.
    crop_side: f64,
}

/// One generation per seed with each configuration, compared.
fn compare_generations(configs: &[Config], args: &Args) -> anyhow::Result<Generations> {
    let params = pipeline_params(args);
    params.check()?;
    let (layout, faces, _) = pipeline_layout(args, configs)?;
    let mut loaded = Vec::with_capacity(2);
    for config in configs {
        let tokenizers = Tokenizers::load(&config.set)?;
        let models = Models::load(config.backend.as_ref(), config.set.clone())?;
        loaded.push((tokenizers, models));
    }
    let patch_size = configs[0].set.manifest.config.patch_size;
    let mut results = Vec::new();
    for seed in 0..args.seeds.unwrap_or(3) as u64 {
        let params = Params {
            seed,
            ..params.clone()
        };
        let mut runs = Vec::with_capacity(2);
        for (tokenizers, models) in loaded.iter_mut() {
            let job = pipeline::prepare_with_faces(
                &models.set,
                tokenizers,
                layout.clone(),
                params.clone(),
                None,
                faces.as_deref(),
            )?;
            runs.push(pipeline::generate(models, &job, &mut |_| {
                ControlFlow::Continue(())
            })?);
        }
        let arcface = loaded[0].1.arcface.as_mut();
        let face_similarity =
            face_similarities(arcface, &runs[0].image, &runs[1].image, &layout, patch_size)?;
        let result = GenerationFidelity {
            seed,
            latent_cosine: idpatch::fidelity::cosine(
                &runs[0].latents.to_f32_vec(),
                &runs[1].latents.to_f32_vec(),
            ),
            psnr_db: psnr(&runs[0].image, &runs[1].image)?,
            face_similarity,
        };
        if !args.json {
            note!("fidelity: seed {seed} done");
        }
        results.push(result);
    }
    Ok(Generations {
        layout,
        params,
        results,
        crop_side: face_crop_side(patch_size),
    })
}

fn print_generations(
    args: &Args,
    names: &[String; 2],
    report: &Generations,
) -> anyhow::Result<ExitCode> {
    let Generations {
        layout,
        params,
        results,
        crop_side,
    } = report;
    let n = results.len().max(1) as f64;
    let mean = |f: &dyn Fn(&GenerationFidelity) -> f64| results.iter().map(f).sum::<f64>() / n;
    let latent_mean = mean(&|g| g.latent_cosine);
    let latent_min = results.iter().map(|g| g.latent_cosine).fold(1.0, f64::min);
    let finite: Vec<f64> = results.iter().filter_map(|g| g.psnr_db).collect();
    let psnr_mean = (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64);
    let faces_mean = mean(&|g| g.mean_face_similarity());
    let setting = json!({
        "size": {"height": layout.height, "width": layout.width},
        "people": layout.people.len(),
        "steps": params.steps,
        "guidance": params.guidance,
        "face_crop_side": crop_side,
    });
    if args.json {
        for g in results {
            outln!(
                "{}",
                json!({"compare": names, "generation": g, "settings": setting})
            )?;
        }
        let line = json!({
            "compare": names,
            "seeds": results.len(),
            "latent_cosine_mean": latent_mean,
            "latent_cosine_min": latent_min,
            "psnr_db_mean": psnr_mean,
            "identical_images": results.len() - finite.len(),
            "face_similarity_mean": faces_mean,
        });
        outln!("{line}")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "generations: {}x{} (width x height), {} people, {} steps, guidance {}",
        layout.width,
        layout.height,
        layout.people.len(),
        params.steps,
        params.guidance
    )?;
    outln!(
        "{:<6} {:>14} {:>9} {:>15}  per person",
        "seed",
        "latent cosine",
        "PSNR dB",
        "face sim (mean)"
    )?;
    let shown = |p: Option<f64>| p.map_or("identical".to_string(), |v| format!("{v:.2}"));
    for g in results {
        let people: Vec<String> = g
            .face_similarity
            .iter()
            .map(|s| format!("{s:.4}"))
            .collect();
        outln!(
            "{:<6} {:>14.6} {:>9} {:>15.4}  {}",
            g.seed,
            g.latent_cosine,
            shown(g.psnr_db),
            g.mean_face_similarity(),
            people.join(" ")
        )?;
    }
    outln!(
        "{:<6} {:>14.6} {:>9} {:>15.4}  (latent cosine min {latent_min:.6})",
        "mean",
        latent_mean,
        shown(psnr_mean),
        faces_mean
    )?;
    Ok(ExitCode::SUCCESS)
}
