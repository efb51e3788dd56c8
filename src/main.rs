//! The `rnvp` command: parses flags (cli.rs) and dispatches to one function per subcommand
//! (cmd/).
mod cli;
mod cmd;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use cmd::sample::Map;
use std::process::ExitCode;

fn main() -> ExitCode {
    rnvp::tune_allocator();
    // libtorch failures surface as panics in tch's infallible ops: report them in one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown error");
        if msg.contains("Broken pipe") {
            // the reader of our output went away (`rnvp inspect m.pt | head`): stop quietly
            std::process::exit(141);
        }
        eprintln!("error: internal: {}", rnvp::error::first_line(msg));
    }));
    let parsed = Cli::command().try_get_matches().and_then(|m| {
        let cli = Cli::from_arg_matches(&m)?;
        Ok((cli, m))
    });
    let (cli, matches) = match parsed {
        Ok(v) => v,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message on one line: drop the usage and "--help" hints, join the rest
            let text = e.render().to_string();
            let keep: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("{}", keep.join(" "));
            return ExitCode::from(2);
        }
    };
    let code = match run(cli.command, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", rnvp::error::first_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    };
    if std::env::var_os("RNVP_PEAK_MEMORY").is_some() {
        report_peak_memory();
    }
    code
}

/// With `RNVP_PEAK_MEMORY` set, the command's peak resident memory (Linux's VmHWM) goes to stderr
/// as a last line: `peak memory: N kB`.
fn report_peak_memory() {
    match rnvp::sys::peak_memory_kb() {
        Some(kb) => eprintln!("peak memory: {kb} kB"),
        None => eprintln!("peak memory: unknown (no /proc/self/status)"),
    }
}

fn run(command: Command, matches: &clap::ArgMatches) -> Result<()> {
    match command {
        Command::Train(a) => cmd::train::train(*a, matches),
        Command::Eval(a) => cmd::eval::eval(a),
        Command::Sample(a) => cmd::sample::sample(a),
        Command::LogProb(a) => cmd::sample::map(a, Map::LogProb),
        Command::Encode(a) => cmd::sample::map(a, Map::Encode),
        Command::Decode(a) => cmd::sample::map(a, Map::Decode),
        Command::Plot(a) => cmd::plot::plot(a),
        Command::Inspect(a) => cmd::files::inspect(a),
        Command::Convert(a) => cmd::files::convert(a),
        Command::Export(a) => cmd::files::export(a),
        Command::Datasets(a) => cmd::datasets::datasets(a),
    }
}
