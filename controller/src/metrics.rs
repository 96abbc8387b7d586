//! Prometheus metrics: reconciles, errors by reason, durations, API writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub verb: String,
}

pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub writes: Family<WriteLabels, Counter>,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        let writes = Family::<WriteLabels, Counter>::default();
        let mut registry = Registry::with_prefix("sidekey_controller");
        registry.register("reconciles", "AuthPolicy reconciles by result", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by reason", errors.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        registry.register("api_writes", "Writes sent to the Kubernetes API by kind and verb", writes.clone());
        Metrics {
            reconciles,
            errors,
            duration,
            writes,
            registry,
        }
    }
}

impl Metrics {
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    pub fn total_writes(&self) -> u64 {
        ["Deployment", "Service", "Secret", "AuthPolicy"]
            .iter()
            .flat_map(|k| ["apply", "create", "patch", "patch-status", "delete"].map(|v| (k, v)))
            .map(|(k, v)| {
                self.writes
                    .get(&WriteLabels {
                        kind: k.to_string(),
                        verb: v.into(),
                    })
                    .map_or(0, |c| c.get())
            })
            .sum()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}
