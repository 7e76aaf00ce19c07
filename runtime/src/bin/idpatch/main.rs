//! The `idpatch` command line. Each subcommand lives in its own file with an `Args` struct and a
//! `run` function; errors from the library keep their exit code (2 for bad input).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backend_args;
mod bench;
mod calibrate;
mod condition;
mod generate;
mod output;
mod schedule;
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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
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
    };
    match result {
        Ok(code) => code,
        // The reader of stdout has all it wanted (`idpatch ... | head`): a quiet success.
        Err(err) if err.downcast_ref::<output::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the message: ONNX Runtime's own messages may hold newlines.
            let message = format!("{err:#}");
            output::note!(
                "error: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// 2 for input and usage errors (the library says which), 1 for everything else.
fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<idpatch::Error>())
        .map_or(1, |e| e.exit_code() as u8)
}
