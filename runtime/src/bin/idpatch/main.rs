//! The `idpatch` command line. Each subcommand lives in its own file with an `Args` struct and a
//! `run` function; errors from the library keep their exit code (2 for bad input).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod backend_args;
mod bench;
mod calibrate;
mod condition;
mod eval;
mod faces;
mod generate;
mod layout;
mod output;
mod sampling_args;
mod schedule;
#[cfg(feature = "serve")]
mod serve;
mod tokenize;
mod validate;

#[derive(Parser)]
#[command(
    name = "idpatch",
    version,
    about = "ID-Patch group photos from precompiled ONNX graphs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a group photo from a layout, face photos and a prompt.
    Generate(generate::Args),
    /// Render the ControlNet condition image (pose skeleton plus ID patches) of a layout.
    Condition(condition::Args),
    /// Run every graph of a set on its golden inputs and compare with the PyTorch outputs.
    Validate(validate::Args),
    /// Time each graph of a set on a backend (median and p90 of warm runs), or compare two.
    Bench(bench::Args),
    /// Record the UNet's and ControlNet's inputs over pipeline runs of a calibration set, for
    /// INT8 quantization (calibration/quantize.py).
    Calibrate(calibrate::Args),
    /// Print a scheduler's timesteps, sigmas and initial noise scale for a step count.
    Schedule(schedule::Args),
    /// Print the token ids both SDXL tokenizers give a prompt.
    Tokenize(tokenize::Args),
    /// Detect the faces in a photo (MTCNN): boxes, scores and five landmarks.
    Faces(faces::Args),
    /// Write a pose-free layout with the people where the faces are in a reference photo.
    Layout(layout::Args),
    /// Score generated images: each person's face similarity to its reference (Face Sim) and
    /// whether it is the best match (ID-Pos Acc).
    Eval(eval::Args),
    /// Serve generations over HTTP (POST /v1/generations), one worker per device.
    #[cfg(feature = "serve")]
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        // --help and --version: clap's own output, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // No subcommand: the command list, exit 2.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        // A usage error on one line, as every other input error: clap's message and tips (what
        // is missing, a similar flag), without the usage block that follows them; exit 2.
        Err(e) => {
            output::note!("{}", one_line_usage_error(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Condition(args) => condition::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Faces(args) => faces::run(args),
        Command::Layout(args) => layout::run(args),
        Command::Eval(args) => eval::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of stdout has all it wanted (`idpatch ... | head`): a quiet success.
        Err(err) if err.downcast_ref::<output::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the message: ONNX Runtime's own messages may hold newlines.
            let message = format!("{err:#}");
            // Control characters (from a file name, say) are shown escaped, never sent to the
            // terminal.
            let line: String = message
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .flat_map(|c| {
                    if c.is_control() {
                        c.escape_unicode().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect();
            output::note!("error: {line}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// The command line, parsed with negative numbers taken as values (`--seed -1` reaches the
/// flag's own range check instead of being read as an unknown flag `-1`).
fn parse_args() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    for sub in command.get_subcommands_mut() {
        *sub = std::mem::take(sub).allow_negative_numbers(true);
    }
    Cli::from_arg_matches(&command.try_get_matches()?)
}

/// 2 for input and usage errors (the library says which), 1 for everything else.
fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<idpatch::Error>())
        .map_or(1, |e| e.exit_code() as u8)
}

/// Clap's rendered error up to its `Usage:` block, joined into one line.
fn one_line_usage_error(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if parts.is_empty() {
        "error: bad arguments".to_string()
    } else {
        parts.join(" ").replace(" tip: ", "; tip: ")
    }
}
