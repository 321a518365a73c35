//! `trueip-bench-app`: the app behind every benchmark variant (sink, source, echo).

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;

/// Serves the benchmark's wire protocol on every `--listen` address until killed.
#[derive(Debug, Parser)]
#[command(name = "trueip-bench-app", version, about)]
struct Opt {
    /// Address to listen on (repeat for several), e.g. 0.0.0.0:9000.
    #[arg(long, required = true, value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    trueip_bench::raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = opt.threads {
        builder.worker_threads(n);
    }
    let result = builder
        .build()
        .and_then(|rt| rt.block_on(trueip_bench::app::serve(&opt.listen)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trueip-bench-app: {e}");
            ExitCode::FAILURE
        }
    }
}
