//! What a run produced: samples per variant and metric, the machine, and the wall time (saved
//! as JSON, so the report can be rendered again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{machine, plan::Plan, variant::Variant};

/// The metrics of one variant: samples per metric, plus notes (failures, skips, checks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    /// Metric key → one sample per repetition.
    pub values: BTreeMap<String, Vec<f64>>,
    /// Why something is missing, or what was checked.
    pub notes: Vec<String>,
    /// Why the whole variant did not run.
    pub skipped: Option<String>,
}

impl Samples {
    pub(crate) fn push(&mut self, key: &str, value: f64) {
        self.values.entry(key.to_owned()).or_default().push(value);
    }

    pub(crate) fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// Everything a run produced (also saved as JSON, so the report can be rendered again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The plan it ran.
    pub plan: Plan,
    /// Samples per variant, in [`Variant::ALL`] order.
    pub variants: Vec<(Variant, Samples)>,
    /// The machine and peer versions.
    pub machine: machine::Machine,
    /// Wall time of the whole run, seconds.
    pub wall_secs: f64,
    /// Load average before the run (1 minute).
    pub load_before: f64,
    /// Load average at the end of the run (1 minute; includes the run itself).
    #[serde(default)]
    pub load_after: Option<f64>,
}

/// `1k`, `10k`, or the plain number.
#[must_use]
pub fn idle_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
