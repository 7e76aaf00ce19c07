use std::path::{Path, PathBuf};
use std::process::ExitCode;

use idpatch::backend::{load_checked, Backend};
use idpatch::bench::{golden_inputs, synth_inputs, time_graph, Stats, SynthSize};
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::Error;
use serde_json::json;

use crate::backend_args::BackendArgs;

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
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Where inputs come from (default: golden, unless a size is given or the set has none).
    #[arg(long, value_enum)]
    inputs: Option<InputSource>,
    /// Image height in pixels for made-up inputs (default 1024).
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels for made-up inputs (default 1024).
    #[arg(long)]
    width: Option<usize>,
    /// People in the photo for made-up inputs (default 2): faces, and 16 ID tokens each.
    #[arg(long)]
    people: Option<usize>,
    /// Sequence length of the UNet/ControlNet text input (default 77 + 16 * people; 77 is the
    /// length before ID injection starts).
    #[arg(long)]
    sequence: Option<usize>,
    /// Run two configurations side by side and print the ratio of medians (first / second).
    /// Each is a backend (tract, ort-cpu, ort-cuda, ort-tensorrt, ort-auto) run on --models,
    /// or a set directory run on --backend (e.g. an FP16 and an FP32 export).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Vec<String>,
    /// One JSON object per line: per graph and configuration, then per graph the ratio when
    /// comparing.
    #[arg(long)]
    json: bool,
    /// Hash the graph files against the manifest before timing (off: a full-size set is ~10 GB).
    #[arg(long)]
    verify_checksums: bool,
}

struct Config {
    label: String,
    backend: Box<dyn Backend>,
    set: ModelSet,
}

struct Timing {
    stats: Stats,
    ep: String,
    precision: String,
    source: &'static str,
    shapes: serde_json::Map<String, serde_json::Value>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let checksums = if args.verify_checksums {
        Checksums::Verify
    } else {
        Checksums::Skip
    };
    let open = |dir: &Path| ModelSet::open(dir, checksums);
    let configs: Vec<Config> = if args.compare.is_empty() {
        vec![Config {
            label: args.backend.label(),
            backend: args.backend.make()?,
            set: open(&args.models)?,
        }]
    } else {
        let mut configs = Vec::new();
        for label in &args.compare {
            let config = if let Some(backend) = args.backend.with_label(label) {
                Config {
                    label: label.clone(),
                    backend: backend.make()?,
                    set: open(&args.models)?,
                }
            } else if Path::new(label).is_dir() {
                Config {
                    label: label.clone(),
                    backend: args.backend.make()?,
                    set: open(Path::new(label))?,
                }
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
            configs.push(config);
        }
        configs
    };
    let roles: Vec<Role> = if args.graphs.is_empty() {
        Role::ALL.to_vec()
    } else {
        args.graphs
            .iter()
            .map(|g| {
                Role::from_name(g)
                    .ok_or_else(|| Error::invalid_input("--graphs", format!("unknown graph {g:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    let size_given = args.height.is_some() || args.width.is_some() || args.people.is_some();
    let size = SynthSize {
        height: args.height.unwrap_or(1024),
        width: args.width.unwrap_or(1024),
        people: args.people.unwrap_or(2),
        sequence: args.sequence,
    };
    if args.sequence.is_some() && args.inputs == Some(InputSource::Golden) {
        return Err(Error::invalid_input("--sequence", "only applies to made-up inputs").into());
    }
    let source = match args.inputs {
        Some(s) => s,
        None if size_given || args.sequence.is_some() => InputSource::Synth,
        None => InputSource::Golden,
    };

    if !args.json {
        println!(
            "{:<15} {:<22} {:>10} {:>10} {:>5}  shapes",
            "graph", "config", "median ms", "p90 ms", "runs"
        );
    }
    for role in roles {
        let mut medians = Vec::new();
        for config in &configs {
            let timing = time_one(config, role, source, &size, &args)?;
            medians.push(timing.stats.median_ms);
            if args.json {
                let line = json!({
                    "graph": role.name(),
                    "config": config.label,
                    "backend": config.backend.name(),
                    "ep": timing.ep,
                    "precision": timing.precision,
                    "models": config.set.dir.display().to_string(),
                    "inputs": timing.source,
                    "median_ms": timing.stats.median_ms,
                    "p90_ms": timing.stats.p90_ms,
                    "min_ms": timing.stats.min_ms,
                    "runs": timing.stats.runs,
                    "warmup": args.warmup,
                    "shapes": timing.shapes,
                });
                println!("{line}");
            } else {
                let shapes: Vec<String> = timing
                    .shapes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{:<15} {:<22} {:>10.3} {:>10.3} {:>5}  {}",
                    role.name(),
                    config.label,
                    timing.stats.median_ms,
                    timing.stats.p90_ms,
                    timing.stats.runs,
                    shapes.join(" ")
                );
            }
        }
        if let [a, b] = medians[..] {
            let ratio = a / b;
            if args.json {
                let line = json!({
                    "graph": role.name(),
                    "compare": [configs[0].label, configs[1].label],
                    "ratio_of_medians": ratio,
                });
                println!("{line}");
            } else {
                println!(
                    "{:<15} {:<22} {:>10.3}",
                    role.name(),
                    "ratio of medians",
                    ratio
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn time_one(
    config: &Config,
    role: Role,
    source: InputSource,
    size: &SynthSize,
    args: &Args,
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
    let stats = time_graph(graph.as_mut(), &inputs, args.warmup, args.runs)?;
    let name = config.backend.name();
    Ok(Timing {
        stats,
        ep: name.strip_prefix("ort-").unwrap_or("cpu").to_string(),
        precision: entry.precision.clone(),
        source,
        shapes,
    })
}
