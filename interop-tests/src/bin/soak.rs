//! `trueip-soak` (`make soak`): runs the soak of [`trueip_interop_tests::soak`] for
//! `$SOAK_SECONDS` (default 600) and writes its figures to `interop-tests/SOAK-RESULTS.md`
//! (or the path given as the first argument).

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use trueip_interop_tests::soak;
use trueip_test_kit::{Need, prereq, run};

const DEFAULT_SECONDS: u64 = 600;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: stderr is the only channel left.
            let _ = writeln!(std::io::stderr(), "trueip-soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let seconds = match std::env::var("SOAK_SECONDS") {
        Ok(s) => s.parse().with_context(|| format!("SOAK_SECONDS={s}"))?,
        Err(_) => DEFAULT_SECONDS,
    };
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/SOAK-RESULTS.md").to_owned());
    if let Some(why) = prereq::missing(&[Need::Haproxy, Need::Sidecar]) {
        anyhow::bail!("cannot soak: {why}");
    }
    run::note(&format!("soaking for {seconds} s ..."));
    let report = soak::run(soak::Config::new(Duration::from_secs(seconds)))?;
    let md = format!(
        "# Soak results\n\n\
         `make soak` (`SOAK_SECONDS={seconds}`): client → HAProxy `send-proxy-v2` → \
         trueip-sidecar `--mode none` → echo app, in network namespaces; the app is killed and \
         restarted half-way, and the long streams' sidecar gets SIGTERM mid-stream at the end. \
         Every assertion passed (see `interop-tests/src/soak.rs` for what each figure must \
         satisfy).\n\n{}",
        report.markdown()
    );
    std::fs::write(&out, &md).with_context(|| format!("writing {out}"))?;
    // Best effort: the file has the figures.
    let _ = std::io::stdout().lock().write_all(md.as_bytes());
    Ok(())
}
