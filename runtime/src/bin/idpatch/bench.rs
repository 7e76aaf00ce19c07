use std::path::PathBuf;
use std::process::ExitCode;

use idpatch::backend::{load_checked, Backend};
use idpatch::bench::{
    golden_inputs, synth_face, synth_inputs, synth_layout, time_graph, time_pipeline,
    PipelineStats, Stats, SynthSize,
};
use idpatch::detect::people;
use idpatch::layout::{Layout, MAX_PEOPLE, MAX_SIDE};
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::pipeline::{self, check_image_sides, Params, MAX_STEPS};
use idpatch::Error;
use serde_json::json;

use crate::backend_args::BackendArgs;
use crate::output::{graph_cell, note, outln};
use crate::sampling_args::SamplingArgs;

mod compare;
mod fidelity;
mod profile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum InputSource {
    /// The exporter's golden input tensors (their shapes).
    Golden,
    /// Made up from the IO spec at --height/--width/--people.
    Synth,
}

#[derive(clap::Args)]
pub struct Args {
    /// Graph set directory (holding manifest.json).
    #[arg(long, default_value = "models/tiny")]
    models: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    /// Only these graphs (comma-separated roles, e.g. unet,controlnet).
    #[arg(long, value_delimiter = ',')]
    graphs: Vec<String>,
    /// Time the whole pipeline instead of single graphs: graphs loaded once, then per run the
    /// input preparation and the generation (no file written), reported per stage. Without
    /// --layout the layout is made up at --height/--width/--people: pose-free people at evenly
    /// spaced positions across the middle, each with a synthesized 112x112 aligned face (no face
    /// photo is read). The prompt is fixed ("a group photo"), the scheduler is the set's.
    #[arg(long)]
    pipeline: bool,
    /// With --pipeline: the layout file to time (face photos read on every run, as `generate`
    /// does), instead of a made-up one.
    #[arg(long)]
    layout: Option<PathBuf>,
    /// With --pipeline: steps, guidance and ControlNet scale, under their short or diffusers'
    /// names.
    #[command(flatten)]
    sampling: SamplingArgs,
    /// With --pipeline: diffusers' control_guidance_start (default 0): the ControlNet is skipped
    /// on step i of N unless i/N >= this.
    #[arg(long, allow_negative_numbers = true)]
    control_guidance_start: Option<f64>,
    /// With --pipeline: diffusers' control_guidance_end (default 1): the ControlNet is skipped on
    /// step i of N unless (i+1)/N <= this.
    #[arg(long, allow_negative_numbers = true)]
    control_guidance_end: Option<f64>,
    /// Untimed runs before timing (default 3; 1 with --pipeline).
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed runs (default 20; 3 with --pipeline).
    #[arg(long)]
    runs: Option<usize>,
    /// Where inputs come from (default: golden, unless a size is given or the set has none).
    #[arg(long, value_enum)]
    inputs: Option<InputSource>,
    /// Image height in pixels for made-up inputs or the made-up layout (default 1024).
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels for made-up inputs or the made-up layout (default 1024).
    #[arg(long)]
    width: Option<usize>,
    /// People in the photo for made-up inputs or the made-up layout (default 2): faces, and 16 ID
    /// tokens each.
    #[arg(long)]
    people: Option<usize>,
    /// Sequence length of the UNet/ControlNet text input (default 77 + 16 * people; 77 is the
    /// length before ID injection starts).
    #[arg(long)]
    sequence: Option<usize>,
    /// Run two configurations side by side and print the ratio of medians (first / second;
    /// with --pipeline, of the total medians). Each is a backend (tract, ort-cpu, ort-cuda,
    /// ort-tensorrt, ort-auto) run on --models, or a set directory run on --backend (e.g. an
    /// FP16 and an FP32 export). ONNX Runtime flags go to the configurations that honour them;
    /// one that neither honours is an error, and so are --backend and --ep when both labels are
    /// backends.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Vec<String>,
    /// One JSON object per line: per graph and configuration, then per graph the ratio when
    /// comparing. With --pipeline: one object per configuration (stages, total,
    /// rust_owned_share, ...), then the ratio of total medians when comparing.
    #[arg(long)]
    json: bool,
    /// Compare the outputs of the two --compare configurations instead of timing them (B against
    /// A as the reference): per graph on the same inputs (largest absolute and relative error,
    /// cosine), then one generation per seed (final-latent cosine, image PSNR, ArcFace
    /// similarity of the faces at each layout position). Takes --graphs, --inputs and the size
    /// flags for the graphs, --layout or the size flags, --steps, --guidance and the control
    /// guidance window for the generations.
    #[arg(long)]
    fidelity: bool,
    /// Run ONNX Runtime's profiler on each timed graph: its trace goes to DIR
    /// (`<graph>_<timestamp>.json`; with --compare in DIR/a and DIR/b), and the ten operator
    /// types with the most kernel time over the timed runs are printed below the graph's row
    /// (with --json, all of them, as its `profile`). The timings then include the profiler's
    /// own cost. Single graphs on ONNX Runtime only, at most 1000 runs with the warm-up.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// With --fidelity: generations to compare, seeds 0 to N-1 (default 3).
    #[arg(long)]
    seeds: Option<usize>,
    /// Do not verify the set's files against the manifest's sha256 (verified files are cached,
    /// so only the first run after a change reads a full set).
    #[arg(long)]
    skip_checksums: bool,
}

struct Config {
    /// What was asked for: a backend label or a set directory.
    label: String,
    /// Whether `label` names a backend (then tables show the provider it got).
    backend_label: bool,
    args: BackendArgs,
    backend: Box<dyn Backend>,
    set: ModelSet,
}

impl Config {
    /// The label for tables and JSON: `ort-auto` shows the provider it settled on once a graph
    /// has loaded (`ort-auto (ort-cpu)`).
    fn shown(&self) -> String {
        let name = self.backend.name();
        if self.backend_label && name != self.label {
            format!("{} ({name})", self.label)
        } else {
            self.label.clone()
        }
    }
}

struct Timing {
    stats: Stats,
    ep: String,
    precision: String,
    source: &'static str,
    shapes: serde_json::Map<String, serde_json::Value>,
    profile: Option<idpatch::profile::Profile>,
}

/// A layout gives the size and the people: a size flag given beside `--layout` is a usage
/// error naming that flag (`--pipeline` and `--fidelity` alike).
fn check_layout_without_size_flags(args: &Args) -> Result<(), Error> {
    if args.layout.is_none() {
        return Ok(());
    }
    let size_flags = [
        ("--height", args.height.is_some()),
        ("--width", args.width.is_some()),
        ("--people", args.people.is_some()),
    ];
    match size_flags.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(Error::invalid_input(
            *flag,
            "cannot be combined with --layout (the layout gives the size and the people)",
        )),
        None => Ok(()),
    }
}

/// Flags that the chosen mode does not take, as a usage error naming the first one given.
fn check_combinations(args: &Args) -> Result<(), Error> {
    if args.pipeline {
        check_layout_without_size_flags(args)?;
    }
    let given = args.sampling.given();
    let conflicts: &[(bool, &str, &str)] = if args.pipeline {
        &[
            (!args.graphs.is_empty(), "--graphs", "times single graphs"),
            (
                args.inputs.is_some(),
                "--inputs",
                "applies to single graphs",
            ),
            (
                args.sequence.is_some(),
                "--sequence",
                "applies to single graphs",
            ),
        ]
    } else {
        &[
            (args.layout.is_some(), "--layout", "needs --pipeline"),
            (given[0].1, given[0].0, "needs --pipeline"),
            (given[1].1, given[1].0, "needs --pipeline"),
            (given[2].1, given[2].0, "needs --pipeline"),
            (
                args.control_guidance_start.is_some(),
                "--control-guidance-start",
                "needs --pipeline",
            ),
            (
                args.control_guidance_end.is_some(),
                "--control-guidance-end",
                "needs --pipeline",
            ),
        ]
    };
    match conflicts.iter().find(|(given, ..)| *given) {
        Some((_, flag, why)) if args.pipeline => Err(Error::invalid_input(
            *flag,
            format!("cannot be combined with --pipeline ({why})"),
        )),
        Some((_, flag, why)) => Err(Error::invalid_input(*flag, *why)),
        None => Ok(()),
    }
}

/// Most untimed runs accepted.
const MAX_WARMUP: usize = 1_000;
/// Most timed runs accepted (every sample is kept for the percentiles).
const MAX_RUNS: usize = 100_000;

/// Range checks of the size and count flags, before anything is allocated from them: people as
/// a layout allows, sides as the largest layout side (the multiple the set needs is checked
/// with the set), steps as `generate` takes them.
fn check_bounds(args: &Args) -> Result<(), Error> {
    let max_side = MAX_SIDE as usize;
    let ranges = [
        ("--people", args.people, 1, MAX_PEOPLE),
        ("--height", args.height, 1, max_side),
        ("--width", args.width, 1, max_side),
        ("--warmup", args.warmup, 0, MAX_WARMUP),
        ("--runs", args.runs, 1, MAX_RUNS),
        ("--steps", args.sampling.steps(), 1, MAX_STEPS),
    ];
    for (flag, value, lo, hi) in ranges {
        if let Some(v) = value.filter(|v| !(lo..=hi).contains(v)) {
            return Err(Error::invalid_input(
                flag,
                format!("must be at least {lo} and at most {hi}, got {v}"),
            ));
        }
    }
    Ok(())
}

/// `--sequence`: at most the text tokens plus the ID tokens of the most people a layout holds.
fn check_sequence(sequence: Option<usize>, configs: &[Config]) -> Result<(), Error> {
    let Some(sequence) = sequence else {
        return Ok(());
    };
    for config in configs {
        let c = &config.set.manifest.config;
        let max = c.text_len + c.id_tokens_per_face * MAX_PEOPLE;
        if !(1..=max).contains(&sequence) {
            return Err(Error::invalid_input(
                "--sequence",
                format!(
                    "must be at least 1 and at most {max} ({} text tokens + {} ID tokens for \
                     each of at most {MAX_PEOPLE} people), got {sequence}",
                    c.text_len, c.id_tokens_per_face
                ),
            ));
        }
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    bench(&args).map_err(|e| args.sampling.as_typed(e))
}

fn bench(args: &Args) -> anyhow::Result<ExitCode> {
    profile::check_mode(args)?;
    if args.fidelity {
        return fidelity::run(args);
    }
    if args.seeds.is_some() {
        return Err(Error::invalid_input("--seeds", "needs --fidelity").into());
    }
    check_combinations(args)?;
    check_bounds(args)?;
    let configs = configs(args)?;
    check_sequence(args.sequence, &configs)?;
    if args.pipeline {
        return run_pipeline(args, &configs);
    }
    let (warmup, runs) = (args.warmup.unwrap_or(3), args.runs.unwrap_or(20));
    let roles = Role::parse_list(&args.graphs, "--graphs")?;
    let (size, source) = graph_inputs(args)?;
    if args.profile.is_some() {
        note!("bench: --profile: these timings include the profiler's own cost");
    }
    if !args.json {
        outln!(
            "{} {:<22} {:>10} {:>10} {:>5}  shapes",
            graph_cell("graph"),
            "config",
            "median ms",
            "p90 ms",
            "runs"
        )?;
    }
    for role in roles {
        let mut medians = Vec::new();
        for config in &configs {
            let timing = time_one(config, role, source, &size, args, warmup, runs)?;
            config.args.check_resolved(config.backend.as_ref())?;
            medians.push(timing.stats.median_ms);
            print_timing(args, role, config, &timing, warmup)?;
        }
        if let [a, b] = medians[..] {
            print_ratio(args, role, &configs, a / b)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration the backend flags give, or the two of `--compare`.
fn configs(args: &Args) -> anyhow::Result<Vec<Config>> {
    if !args.compare.is_empty() {
        return compare::configs(args);
    }
    args.backend.check()?;
    let checksums = Checksums::from_skip_flag(args.skip_checksums);
    let label = args.backend.label();
    let config_args = profile::with_profiler(args, args.backend.clone(), &label, None)?;
    Ok(vec![Config {
        label,
        backend_label: true,
        backend: config_args.make()?,
        args: config_args,
        set: ModelSet::open(&args.models, checksums)?,
    }])
}

/// The made-up input size and where single-graph inputs come from: golden inputs unless a size,
/// a sequence length or `--inputs synth` asks for made-up ones.
fn graph_inputs(args: &Args) -> Result<(SynthSize, InputSource), Error> {
    let size_given = args.height.is_some() || args.width.is_some() || args.people.is_some();
    let size = SynthSize {
        height: args.height.unwrap_or(1024),
        width: args.width.unwrap_or(1024),
        people: args.people.unwrap_or(2),
        sequence: args.sequence,
    };
    if args.sequence.is_some() && args.inputs == Some(InputSource::Golden) {
        return Err(Error::invalid_input(
            "--sequence",
            "only applies to made-up inputs",
        ));
    }
    let source = match args.inputs {
        Some(s) => s,
        None if size_given || args.sequence.is_some() => InputSource::Synth,
        None => InputSource::Golden,
    };
    Ok((size, source))
}

/// One graph's timing on one configuration: a table row, or a JSON line with `--json`.
fn print_timing(
    args: &Args,
    role: Role,
    config: &Config,
    timing: &Timing,
    warmup: usize,
) -> anyhow::Result<()> {
    if args.json {
        let line = json!({
            "graph": role.name(),
            "config": config.shown(),
            "backend": config.backend.name(),
            "ep": timing.ep,
            "precision": timing.precision,
            "models": config.set.dir.display().to_string(),
            "inputs": timing.source,
            "median_ms": timing.stats.median_ms,
            "p90_ms": timing.stats.p90_ms,
            "min_ms": timing.stats.min_ms,
            "runs": timing.stats.runs,
            "warmup": warmup,
            "shapes": timing.shapes,
            "profile": timing.profile,
        });
        outln!("{line}")?;
    } else {
        let shapes: Vec<String> = timing
            .shapes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outln!(
            "{} {:<22} {:>10.3} {:>10.3} {:>5}  {}",
            graph_cell(role.name()),
            config.shown(),
            timing.stats.median_ms,
            timing.stats.p90_ms,
            timing.stats.runs,
            shapes.join(" ")
        )?;
        if let Some(p) = &timing.profile {
            profile::print(p)?;
        }
    }
    Ok(())
}

/// The ratio of the two configurations' medians for one graph.
fn print_ratio(args: &Args, role: Role, configs: &[Config], ratio: f64) -> anyhow::Result<()> {
    if args.json {
        let line = json!({
            "graph": role.name(),
            "compare": [configs[0].shown(), configs[1].shown()],
            "ratio_of_medians": ratio,
        });
        outln!("{line}")?;
    } else {
        outln!(
            "{} {:<22} {:>10.3}",
            graph_cell(role.name()),
            "ratio of medians",
            ratio
        )?;
    }
    Ok(())
}

fn time_one(
    config: &Config,
    role: Role,
    source: InputSource,
    size: &SynthSize,
    args: &Args,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<Timing> {
    let set = &config.set;
    let entry = set.entry(role)?;
    let mut graph = load_checked(config.backend.as_ref(), set, role)?;
    let (tensors, source) = match source {
        InputSource::Golden => match golden_inputs(set, role)? {
            Some(t) => (t, "golden"),
            None if args.inputs.is_none() => (synth_inputs(set, role, size)?, "synth"),
            None => {
                return Err(set
                    .error(format!(
                        "graph {role} has no golden tensors (use --inputs synth)"
                    ))
                    .into())
            }
        },
        InputSource::Synth => (synth_inputs(set, role, size)?, "synth"),
    };
    let mut shapes = serde_json::Map::new();
    let mut inputs = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        shapes.insert(name.clone(), json!(tensor.shape()));
        let dtype = entry
            .inputs
            .iter()
            .find(|s| s.name == name)
            .map_or(tensor.dtype(), |s| s.dtype);
        // Inputs go to the device once, as a pipeline keeps its tensors there between steps.
        let value = config.backend.to_device(tensor.cast(dtype)?)?;
        inputs.push((name, value));
    }
    let stats = time_graph(graph.as_mut(), &inputs, warmup, runs)?;
    let profile = match graph.end_profiling()? {
        Some(trace) => Some(idpatch::profile::summarize(&trace, warmup, warmup + runs)?),
        None => None,
    };
    let name = config.backend.name();
    Ok(Timing {
        stats,
        ep: name.strip_prefix("ort-").unwrap_or("cpu").to_string(),
        precision: entry.precision.clone(),
        source,
        shapes,
        profile,
    })
}

/// `--pipeline`: every configuration over the same layout, then the ratio of total medians.
fn run_pipeline(args: &Args, configs: &[Config]) -> anyhow::Result<ExitCode> {
    let (warmup, runs) = (args.warmup.unwrap_or(1), args.runs.unwrap_or(3));
    let params = pipeline_params(args);
    params.check()?;
    let (layout, faces, layout_name) = pipeline_layout(args, configs)?;
    let mut results: Vec<PipelineStats> = Vec::new();
    for config in configs {
        let stats = time_pipeline(
            config.backend.as_ref(),
            config.set.clone(),
            &layout,
            &params,
            faces.as_deref(),
            warmup,
            runs,
        )?;
        config.args.check_resolved(config.backend.as_ref())?;
        if args.json {
            let line = pipeline_json(config, &stats, &layout, &layout_name, &params, runs, warmup);
            outln!("{line}")?;
        }
        results.push(stats);
    }
    if !args.json {
        print_pipeline_table(configs, &results, &layout, &layout_name, &params, runs)?;
    }
    if let [a, b] = &results[..] {
        let ratio = a.total.median_ms / b.total.median_ms;
        if args.json {
            let line = json!({
                "compare": [configs[0].shown(), configs[1].shown()],
                "ratio_of_total_medians": ratio,
            });
            outln!("{line}")?;
        } else {
            outln!(
                "ratio of total medians ({} / {}): {ratio:.3}",
                configs[0].shown(),
                configs[1].shown()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The parameters of `bench --pipeline`: the sampling flags given, else `generate`'s defaults.
fn pipeline_params(args: &Args) -> Params {
    let defaults = Params::default();
    Params {
        prompt: "a group photo".into(),
        steps: args.sampling.steps().unwrap_or(defaults.steps),
        guidance: args.sampling.guidance().unwrap_or(defaults.guidance),
        controlnet_scale: args
            .sampling
            .controlnet_scale()
            .unwrap_or(defaults.controlnet_scale),
        control_guidance_start: args
            .control_guidance_start
            .unwrap_or(defaults.control_guidance_start),
        control_guidance_end: args
            .control_guidance_end
            .unwrap_or(defaults.control_guidance_end),
        ..defaults
    }
}

/// The layout the pipeline runs on: `--layout` (its photos' faces detected once, before timing)
/// or a made-up pose-free one with a synthesized face per person; with its name for output.
fn pipeline_layout(
    args: &Args,
    configs: &[Config],
) -> anyhow::Result<(Layout, Option<Vec<idpatch::image_io::Rgb8>>, String)> {
    Ok(match &args.layout {
        Some(path) => {
            let mut layout = Layout::load(path, true)?;
            check_sides(configs, &layout, ["layout width", "layout height"])?;
            // Faces without keypoints are detected once, before timing; the runs then read and
            // align the photos as `generate` does.
            let images = pipeline::load_face_images(&layout)?;
            let config = &configs[0];
            people::resolve_faces(&mut layout, &images, config.backend.as_ref(), &config.set)?;
            (layout, None, path.display().to_string())
        }
        None => {
            let layout = synth_layout(
                args.width.unwrap_or(1024),
                args.height.unwrap_or(1024),
                args.people.unwrap_or(2),
            )?;
            check_sides(configs, &layout, ["--width", "--height"])?;
            let faces = vec![synth_face()?; layout.people.len()];
            (layout, Some(faces), "synth".to_string())
        }
    })
}

/// The layout's sides against every configuration's set, named as `names` (width, height).
fn check_sides(configs: &[Config], layout: &Layout, names: [&str; 2]) -> Result<(), Error> {
    for config in configs {
        check_image_sides(
            &config.set.manifest.config,
            [
                (names[0], layout.width as usize),
                (names[1], layout.height as usize),
            ],
        )?;
    }
    Ok(())
}

/// One `--pipeline --json` object: configuration, stages, ControlNet window and traffic.
fn pipeline_json(
    config: &Config,
    stats: &PipelineStats,
    layout: &Layout,
    layout_name: &str,
    params: &Params,
    runs: usize,
    warmup: usize,
) -> serde_json::Value {
    let stages: serde_json::Map<String, serde_json::Value> = stats
        .stages
        .iter()
        .map(|(name, s)| (name.to_string(), timing_json(s)))
        .collect();
    let traffic = stats
        .traffic
        .as_ref()
        .map(|t| json!({"constants": t.constants, "per_step": t.steps, "total": t.total}));
    json!({
        "config": config.shown(),
        "backend": config.backend.name(),
        "models": config.set.dir.display().to_string(),
        "layout": layout_name,
        "size": {"height": layout.height, "width": layout.width},
        "people": layout.people.len(),
        "num_inference_steps": params.steps,
        "guidance_scale": params.guidance,
        "controlnet_conditioning_scale": params.controlnet_scale,
        "batch": if params.do_classifier_free_guidance() { 2 } else { 1 },
        "control_guidance_start": params.control_guidance_start,
        "control_guidance_end": params.control_guidance_end,
        "runs": runs,
        "warmup": warmup,
        "stages": stages,
        "total": timing_json(&stats.total),
        "rust_owned_share": stats.rust_owned_share(),
        "first_runs": timing_json(&stats.first_runs),
        "load_graphs_ms": stats.load_graphs_ms,
        "controlnet": {
            "calls": stats.controlnet_calls,
            "skipped": stats.controlnet_skipped,
            "saved": stats.controlnet_saved.as_ref().map(timing_json),
        },
        "traffic": traffic,
        "memory": stats.memory.iter().map(|m| json!({
            "device": m.device, "in_use_bytes": m.in_use, "reserved_bytes": m.reserved,
            "peak_bytes": m.peak,
        })).collect::<Vec<_>>(),
    })
}

fn timing_json(stats: &Stats) -> serde_json::Value {
    json!({"median_ms": stats.median_ms, "p90_ms": stats.p90_ms})
}

/// Per configuration: the steps the control guidance window skipped and the bytes moved.
fn print_window_and_traffic(configs: &[Config], results: &[PipelineStats]) -> anyhow::Result<()> {
    for (config, stats) in configs.iter().zip(results) {
        if stats.controlnet_skipped > 0 {
            outln!(
                "{}: controlnet skipped on {} of {} steps (control guidance window)",
                config.shown(),
                stats.controlnet_skipped,
                stats.controlnet_skipped + stats.controlnet_calls
            )?;
        }
        if let Some(traffic) = &stats.traffic {
            for line in traffic.summary().lines() {
                outln!("{}: {line}", config.shown())?;
            }
        }
        for m in &stats.memory {
            let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
            outln!(
                "{}: memory on {}: {:.1} MiB in use, {:.1} MiB reserved, graphs' peaks sum to {:.1} MiB",
                config.shown(),
                m.device,
                mib(m.in_use),
                mib(m.reserved),
                mib(m.peak)
            )?;
        }
    }
    Ok(())
}

/// One row per stage, a median and p90 column pair per configuration.
fn print_pipeline_table(
    configs: &[Config],
    results: &[PipelineStats],
    layout: &Layout,
    layout_name: &str,
    params: &Params,
    runs: usize,
) -> anyhow::Result<()> {
    outln!(
        "pipeline: {}x{} (width x height), {} people, {} steps, guidance {} (batch {}), \
         control guidance [{}, {}], layout {layout_name}, {runs} runs",
        layout.width,
        layout.height,
        layout.people.len(),
        params.steps,
        params.guidance,
        if params.do_classifier_free_guidance() {
            2
        } else {
            1
        },
        params.control_guidance_start,
        params.control_guidance_end,
    )?;
    let mut header = format!("{:<28}", "stage");
    for config in configs {
        header.push_str(&format!(
            " {:>14} {:>10}",
            format!("{} median ms", config.shown()),
            "p90 ms"
        ));
    }
    outln!("{header}")?;
    let row = |name: &str, pick: &dyn Fn(&PipelineStats) -> (f64, f64)| {
        let mut line = format!("{name:<28}");
        for stats in results {
            let (median, p90) = pick(stats);
            line.push_str(&format!(" {median:>14.3} {p90:>10.3}"));
        }
        outln!("{line}")
    };
    for (i, (name, _)) in results[0].stages.iter().enumerate() {
        row(name, &|s| (s.stages[i].1.median_ms, s.stages[i].1.p90_ms))?;
    }
    row("total", &|s| (s.total.median_ms, s.total.p90_ms))?;
    row("  first runs (in cn + unet)", &|s| {
        (s.first_runs.median_ms, s.first_runs.p90_ms)
    })?;
    row("load graphs (once)", &|s| {
        (s.load_graphs_ms, s.load_graphs_ms)
    })?;
    if results.iter().any(|s| s.controlnet_skipped > 0) {
        row("  controlnet saved (window)", &|s| {
            s.controlnet_saved
                .as_ref()
                .map_or((0.0, 0.0), |t| (t.median_ms, t.p90_ms))
        })?;
    }
    print_window_and_traffic(configs, results)?;
    let shares: Vec<String> = configs
        .iter()
        .zip(results)
        .map(|(c, s)| format!("{} {:.2}%", c.shown(), 100.0 * s.rust_owned_share()))
        .collect();
    outln!(
        "Rust-owned share of the median total (faces, tokenize, condition, scheduler + CFG, \
         to RGB8): {}",
        shares.join(", ")
    )
}
