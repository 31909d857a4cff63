//! The load generator of `scripts/bench/` (the same code as `anya bench`: see `anya::loadgen`).
//! Prints one JSON line.

use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Closed-loop HTTP load generator for anya and its peers")]
struct Cli {
    #[command(flatten)]
    args: anya::loadgen::Args,
}

fn main() {
    let mut args = Cli::parse().args;
    if let Some(n) = args.print_prompt {
        println!("{}", json!(anya::loadgen::prompt(n, args.prompt_words)));
        return;
    }
    // The harness parses standard output; no progress bar in its logs.
    args.quiet = true;
    match anya::loadgen::run_blocking(args) {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    }
}
