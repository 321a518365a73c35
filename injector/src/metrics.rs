//! Counters for `/metrics` (Prometheus text format): what the webhook decided, and whether its
//! certificate reloads work — the two things to alert on.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::review::Outcome;

/// The webhook's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    admissions: [AtomicU64; Outcome::ALL.len()],
    bad_requests: AtomicU64,
    cert_reloads: AtomicU64,
    cert_reload_errors: AtomicU64,
}

// === impl Metrics ===

impl Metrics {
    /// Counts one answered admission.
    pub(crate) fn admitted(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.admissions[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a request that was not an AdmissionReview.
    pub(crate) fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Relaxed);
    }

    /// Counts a certificate reload.
    pub(crate) fn cert_reloaded(&self) {
        self.cert_reloads.fetch_add(1, Relaxed);
    }

    /// Counts certificate files that changed but did not load.
    pub(crate) fn cert_reload_failed(&self) {
        self.cert_reload_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP trueip_injector_admissions_total Pod admissions answered, by outcome.\n\
             # TYPE trueip_injector_admissions_total counter"
        );
        for (outcome, count) in Outcome::ALL.iter().zip(&self.admissions) {
            let _ = writeln!(
                out,
                "trueip_injector_admissions_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                count.load(Relaxed)
            );
        }
        let mut counter = |name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        };
        counter(
            "trueip_injector_bad_requests_total",
            "Requests to /mutate that were not an AdmissionReview.",
            &self.bad_requests,
        );
        counter(
            "trueip_injector_cert_reloads_total",
            "Serving certificates reloaded after their files changed.",
            &self.cert_reloads,
        );
        counter(
            "trueip_injector_cert_reload_errors_total",
            "Changed certificate files that did not load (the previous certificate is kept).",
            &self.cert_reload_errors,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Skip;

    #[test]
    fn renders_every_outcome() {
        let m = Metrics::default();
        m.admitted(Outcome::Injected);
        m.admitted(Outcome::Injected);
        m.admitted(Outcome::Unchanged(Skip::OptedOut));
        m.cert_reloaded();
        let text = m.render();
        assert!(text.contains("trueip_injector_admissions_total{outcome=\"injected\"} 2\n"));
        assert!(text.contains("trueip_injector_admissions_total{outcome=\"opted_out\"} 1\n"));
        assert!(text.contains("trueip_injector_admissions_total{outcome=\"refused\"} 0\n"));
        assert!(text.contains("trueip_injector_cert_reloads_total 1\n"));
        assert!(text.contains("trueip_injector_cert_reload_errors_total 0\n"));
    }
}
