//! `idpatch calibrate`: records the UNet's and ControlNet's inputs over real pipeline runs of the
//! calibration set, for `calibration/quantize.py` (format in `calibration/README.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use idpatch::calibrate::{
    first_id_step, planned_bytes, sampled_steps, Generation, Index, Recording, FORMAT, INDEX_FILE,
};
use idpatch::detect::people;
use idpatch::layout::Layout;
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::pipeline::{self, check_image_sides, Models, Params, Tokenizers};
use idpatch::{fsutil, limits, Error};

use crate::backend_args::BackendArgs;
use crate::output::{note, outln};

/// Most generations one run records.
const MAX_GENERATIONS: usize = 10_000;
/// Largest prompt file read.
const MAX_PROMPTS_BYTES: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory (holding manifest.json) whose UNet and ControlNet are calibrated.
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    /// Output directory for the calibration data; must not exist or be empty. Written as
    /// `<out>.partial-<pid>` and renamed when complete.
    #[arg(long)]
    out: PathBuf,
    /// Prompt file: one prompt per line, blank lines and `#` comments ignored.
    #[arg(long, default_value = "calibration/prompts.txt")]
    prompts: PathBuf,
    /// Layout files, or directories whose `*.json` files are layouts (in name order).
    #[arg(long, num_args = 1.., default_value = "calibration/layouts")]
    layouts: Vec<PathBuf>,
    /// Generations to run: generation g takes prompt g mod P and layout g mod L, seed --seed + g.
    /// The default covers the first 16 bundled layouts once (every size, 1 to 5 people).
    #[arg(long, default_value_t = 16)]
    generations: usize,
    /// Denoising steps per generation.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Steps recorded per generation (at least 2: one without and one with ID tokens).
    #[arg(long, default_value_t = 4)]
    samples_per_generation: usize,
    /// Seed of the first generation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most bytes of calibration data written: checked from the shapes before anything runs,
    /// and again before each file is written. A number of bytes, or with K, M or G (powers of
    /// 1024).
    #[arg(long, default_value = "1G")]
    max_bytes: String,
    #[command(flatten)]
    backend: BackendArgs,
    /// Do not verify the set's files against the manifest's sha256.
    #[arg(long)]
    skip_checksums: bool,
}

/// `123`, `64K`, `512M`, `2G` (powers of 1024), at most 1 TiB.
fn parse_bytes(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::invalid_input(
            "--max-bytes",
            format!("{text:?} is not a size (bytes, or a number with K, M or G), up to 1T"),
        )
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_shl(shift)
        .filter(|v| *v >> shift == n && *v <= 1 << 40 && *v > 0)
        .ok_or_else(bad)
}

fn read_prompts(path: &Path) -> Result<Vec<String>, Error> {
    let text = fsutil::read_text_limited(path, MAX_PROMPTS_BYTES, "--prompts")?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for prompt in &prompts {
        limits::check_prompt("--prompts", prompt)?;
    }
    if prompts.is_empty() {
        return Err(Error::invalid_input(
            "--prompts",
            format!("{} holds no prompt", path.display()),
        ));
    }
    Ok(prompts)
}

/// The layout files named (directories expanded to their `*.json` files, sorted), each loaded
/// and checked with its face photos.
fn read_layouts(paths: &[PathBuf]) -> Result<Vec<(String, Layout)>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::invalid_input(
                    "--layouts",
                    format!("{} holds no *.json layout", path.display()),
                ));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), Layout::load(&f, true)?)))
        .collect()
}

/// The output directory must be new or empty; its parent must exist.
fn check_out(out: &Path) -> Result<PathBuf, Error> {
    let bad = |reason: String| Error::invalid_input("--out", reason);
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            return Err(bad(format!("{} exists and is not empty", out.display())));
        }
    } else if out.exists() {
        return Err(bad(format!(
            "{} exists and is not a directory",
            out.display()
        )));
    }
    let name = out
        .file_name()
        .ok_or_else(|| bad(format!("{} has no directory name", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(bad(format!(
            "directory {} does not exist",
            parent.display()
        )));
    }
    let mut partial = name.to_os_string();
    partial.push(format!(".partial-{}", std::process::id()));
    Ok(parent.join(partial))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    args.backend.check()?;
    let max_bytes = parse_bytes(&args.max_bytes)?;
    if !(1..=MAX_GENERATIONS).contains(&args.generations) {
        return Err(Error::invalid_input(
            "--generations",
            format!(
                "{} is not between 1 and {MAX_GENERATIONS}",
                args.generations
            ),
        )
        .into());
    }
    let base = Params {
        steps: args.steps,
        ..Params::default()
    };
    base.check()?;
    let prompts = read_prompts(&args.prompts)?;
    let mut layouts = read_layouts(&args.layouts)?;
    let partial = check_out(&args.out)?;
    let set = ModelSet::open(&args.models, Checksums::from_skip_flag(args.skip_checksums))?;
    for (name, layout) in &layouts {
        check_image_sides(
            &set.manifest.config,
            [
                (name.as_str(), layout.width as usize),
                (name.as_str(), layout.height as usize),
            ],
        )?;
    }
    let backend = args.backend.make()?;
    // Photos without face keypoints get them from the set's face detector, once per layout, as
    // `generate` does.
    for (_, layout) in &mut layouts {
        let images = pipeline::load_face_images(layout)?;
        people::resolve_faces(layout, &images, backend.as_ref(), &set)?;
    }
    let first = first_id_step(args.steps, base.id_injection_ratio);
    let plan = (0..args.generations)
        .map(|g| {
            let (layout_name, layout) = &layouts[g % layouts.len()];
            let generation = Generation {
                index: g,
                prompt: prompts[g % prompts.len()].clone(),
                layout: layout_name.clone(),
                width: layout.width,
                height: layout.height,
                people: layout.people.len(),
                seed: args.seed.wrapping_add(g as u64),
                steps: sampled_steps(args.steps, args.samples_per_generation, g, first)?,
            };
            Ok((generation, layout.clone()))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let planned = planned_bytes(&set, &plan)?;
    if planned > max_bytes {
        return Err(Error::invalid_input(
            "--max-bytes",
            format!(
                "the plan records up to {planned} B ({} generations x {} steps), above the \
                 bound of {max_bytes} B; raise it or record less",
                args.generations, args.samples_per_generation
            ),
        )
        .into());
    }
    let tokenizers = Tokenizers::load(&set)?;
    let models = Models::load(backend.as_ref(), set)?;
    args.backend.check_resolved(backend.as_ref())?;
    note!(
        "calibrate: {} generations of {} steps, {} recorded each, up to {planned} B on {}",
        args.generations,
        args.steps,
        args.samples_per_generation,
        backend.name()
    );

    std::fs::create_dir(&partial).map_err(|e| Error::io(&partial, e))?;
    let run = Run {
        dir: &partial,
        max_bytes,
        backend: backend.name(),
    };
    let result = record(&args, models, &tokenizers, &plan, &base, &run);
    let (records, bytes) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&partial, &args.out) {
        let e = Error::io(&args.out, e);
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.into());
    }
    outln!(
        "{}: {records} records, {bytes} B, {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Where a run writes and what ran it.
struct Run<'a> {
    dir: &'a Path,
    max_bytes: u64,
    backend: String,
}

/// Runs the plan into `run.dir`, rewriting the index there after each generation (so that an
/// interrupted run leaves a readable index of what is on disk); returns the record count and
/// the bytes written.
fn record(
    args: &Args,
    models: Models,
    tokenizers: &Tokenizers,
    plan: &[(Generation, Layout)],
    base: &Params,
    run: &Run,
) -> anyhow::Result<(usize, u64)> {
    let text_len = models.set.manifest.config.text_len;
    let recording = Recording::new(run.dir, run.max_bytes, text_len);
    let total = plan.len();
    let model_set = models.set.name().to_string();
    let model_set_digest = models.set.model_set_digest()?;
    let graphs: std::collections::BTreeMap<String, String> = [Role::Unet, Role::Controlnet]
        .into_iter()
        .map(|r| Ok((r.name().to_string(), models.set.entry(r)?.sha256.clone())))
        .collect::<Result<_, Error>>()?;
    let write_index = |done: usize, complete: bool| -> Result<(usize, u64), Error> {
        let (records, bytes) = recording.finish()?;
        let generations: Vec<Generation> = plan[..done].iter().map(|(g, _)| g.clone()).collect();
        let index = Index {
            format: FORMAT,
            complete,
            models: args.models.display().to_string(),
            model_set: model_set.clone(),
            model_set_digest: model_set_digest.clone(),
            graphs: graphs.clone(),
            backend: run.backend.clone(),
            steps: base.steps,
            guidance: base.guidance,
            controlnet_scale: base.controlnet_scale,
            id_injection_ratio: base.id_injection_ratio,
            samples_per_generation: args.samples_per_generation,
            generations: &generations,
            records: &records,
            bytes,
        };
        let json = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::graph("calibrate", format!("index: {e}")))?;
        fsutil::write_atomic(&run.dir.join(INDEX_FILE), (json + "\n").as_bytes())?;
        Ok((records.len(), bytes))
    };
    let mut done = 0;
    idpatch::calibrate::run(
        models,
        tokenizers,
        plan,
        base,
        &recording,
        &mut |g: &Generation| {
            done += 1;
            let (records, bytes) = write_index(done, false)?;
            note!(
                "calibrate: generation {}/{total}: {}x{}, {} people, steps {:?}; {records} \
                 records, {bytes} B so far",
                g.index + 1,
                g.width,
                g.height,
                g.people,
                g.steps
            );
            Ok(())
        },
    )?;
    Ok(write_index(plan.len(), true)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert_eq!(parse_bytes("64K").unwrap(), 65_536);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1T").unwrap(), 1 << 40);
        for bad in [
            "",
            "0",
            "-1",
            "1.5G",
            "2X",
            "2T",
            "99999999999999999999",
            "G",
        ] {
            let err = parse_bytes(bad).unwrap_err().to_string();
            assert!(err.starts_with("--max-bytes"), "{bad}: {err}");
        }
    }
}
