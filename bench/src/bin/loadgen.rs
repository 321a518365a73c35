//! `trueip-loadgen`: one benchmark workload against a target, the result as one JSON line on
//! stdout. The runner starts it inside the client namespace.

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use trueip_bench::loadgen::{self, Amount, Direction, HeaderKind, Target};

/// Load generator that speaks PROXY v2 like a load balancer.
#[derive(Debug, Parser)]
#[command(name = "trueip-loadgen", version, about)]
struct Opt {
    /// Where to connect.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,

    /// Send a PROXY v2 header first (what a load balancer does), or nothing.
    #[arg(long, value_enum, default_value = "v2")]
    header: HeaderKind,

    /// Worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Bulk transfer in one direction over parallel streams.
    Bulk {
        /// upload (client → app) or download (app → client).
        #[arg(long, value_enum)]
        direction: Direction,
        /// Parallel streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Bytes per stream (exact, checked); excludes --secs.
        #[arg(long, conflicts_with = "secs")]
        bytes: Option<u64>,
        /// Seconds of sending per stream.
        #[arg(long)]
        secs: Option<f64>,
    },
    /// Request/response over keep-alive connections.
    Rr {
        /// Connections.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// Request (= response) size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Duration in seconds.
        #[arg(long)]
        secs: f64,
    },
    /// HTTP/1.1 GET requests over keep-alive connections (the header once per connection).
    Http {
        /// Connections.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Duration in seconds.
        #[arg(long)]
        secs: f64,
    },
    /// Short connections: connect, header, one request, close.
    Conn {
        /// Concurrent connection loops.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Request (= response) size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Duration in seconds.
        #[arg(long)]
        secs: f64,
    },
    /// Request/response over UDP: each flow (client socket) one datagram in flight, behind a
    /// PROXY v2 UDP header with --header v2.
    Udp {
        /// Client flows.
        #[arg(long, default_value_t = 16)]
        flows: usize,
        /// Datagram payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Duration in seconds.
        #[arg(long)]
        secs: f64,
    },
    /// Opens idle connections, prints the result line, holds them until a line (or EOF) on
    /// stdin or --hold-secs, then closes them.
    Idle {
        /// Connections.
        #[arg(long)]
        conns: usize,
        /// Longest hold, seconds.
        #[arg(long, default_value_t = 120.0)]
        hold_secs: f64,
    },
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a duration in seconds"))
}

fn print(value: &impl serde::Serialize) -> Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn run(opt: Opt) -> Result<()> {
    let target = Target {
        addr: opt.target,
        header: opt.header,
    };
    match opt.workload {
        Workload::Bulk {
            direction,
            streams,
            bytes,
            secs: s,
        } => {
            let amount = match (bytes, s) {
                (Some(b), None) => Amount::Bytes(b),
                (None, Some(s)) => Amount::Duration(secs(s)?),
                _ => bail!("give --bytes or --secs"),
            };
            print(&loadgen::bulk(target, direction, streams, amount).await?)
        }
        Workload::Rr {
            conns,
            size,
            secs: s,
        } => print(&loadgen::request_response(target, conns, size, secs(s)?).await?),
        Workload::Http {
            conns,
            size,
            secs: s,
        } => print(&loadgen::http_requests(target, conns, size, secs(s)?).await?),
        Workload::Conn {
            concurrency,
            size,
            secs: s,
        } => print(&loadgen::short_connections(target, concurrency, size, secs(s)?).await?),
        Workload::Udp {
            flows,
            size,
            secs: s,
        } => print(&trueip_bench::udp::request_response(target, flows, size, secs(s)?).await?),
        Workload::Idle { conns, hold_secs } => {
            let (streams, result) = loadgen::open_idle(target, conns).await?;
            print(&result)?;
            let hold = secs(hold_secs)?;
            // Hold until the runner says so (a line or EOF on stdin), bounded by --hold-secs.
            let wait = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
            });
            let _ = tokio::time::timeout(hold, wait).await;
            drop(streams);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    trueip_bench::raise_fd_limit();
    let result = trueip_bench::runtime(opt.threads)
        .context("starting the runtime")
        .and_then(|rt| {
            let r = rt.block_on(run(opt));
            // A blocked stdin reader must not keep the process alive.
            rt.shutdown_background();
            r
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trueip-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
