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

    /// Also answer OTLP/HTTP trace exports on this address (the "traces on" variant's
    /// collector stand-in), e.g. 127.0.0.1:4318.
    #[arg(long, value_name = "ADDR")]
    otlp_sink: Option<SocketAddr>,

    /// Worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    trueip_bench::raise_fd_limit();
    let result = trueip_bench::runtime(opt.threads).and_then(|rt| {
        rt.block_on(async {
            let counters = std::sync::Arc::default();
            match opt.otlp_sink {
                Some(addr) => tokio::select! {
                    r = trueip_bench::app::serve(&opt.listen) => r,
                    r = trueip_bench::otlp_sink::serve(addr, counters) => r,
                },
                None => trueip_bench::app::serve(&opt.listen).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trueip-bench-app: {e}");
            ExitCode::FAILURE
        }
    }
}
