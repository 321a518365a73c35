//! The short form of `make soak` (20 s): see `trueip_interop_tests::soak` for what it asserts.

use std::time::Duration;

use anyhow::Result;
use trueip_interop_tests::soak;
use trueip_test_kit::{Need, prereq::require};

pub(crate) fn soak_short_form_with_app_restart_and_graceful_drain() -> Result<()> {
    require(&[Need::Haproxy, Need::Sidecar])?;
    let report = soak::run(soak::Config::new(Duration::from_secs(20)))?;
    eprintln!("{}", report.markdown());
    Ok(())
}
