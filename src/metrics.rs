//! The node's Prometheus metrics (`/metrics`): HTTP requests and latencies, Raft
//! proposals and applied entries, disk syncs and their latency.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets are plain values, so counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    method: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    method: &'static str,
}

/// The methods etcd's API knows by name; anything else is counted as `OTHER`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub proposals: Counter,
    pub proposals_failed: Counter,
    pub applied: Counter,
    pub leader_changes: Counter,
    pub term: Gauge,
    pub is_leader: Gauge,
    pub syncs: Counter,
    pub sync_seconds: Histogram,
    pub snapshots: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_seconds =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let (proposals, proposals_failed, applied, leader_changes) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
        );
        let (term, is_leader) = (Gauge::default(), Gauge::default());
        let (syncs, sync_seconds, snapshots) =
            (Counter::default(), latency_histogram(), Counter::default());
        registry.register(
            "http_requests",
            "HTTP requests by method and status code",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method",
            http_seconds.clone(),
        );
        registry.register(
            "raft_proposals",
            "Proposals handed to Raft",
            proposals.clone(),
        );
        registry.register(
            "raft_proposals_failed",
            "Proposals Raft refused (no leader, busy)",
            proposals_failed.clone(),
        );
        registry.register(
            "raft_applied_entries",
            "Committed entries applied to the state machine",
            applied.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader changes seen",
            leader_changes.clone(),
        );
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "raft_is_leader",
            "1 when this member leads",
            is_leader.clone(),
        );
        registry.register(
            "disk_syncs",
            "Disk syncs (one per Raft Ready that wrote)",
            syncs.clone(),
        );
        registry.register(
            "disk_sync_duration_seconds",
            "Disk sync latency",
            sync_seconds.clone(),
        );
        registry.register("raft_snapshots", "Snapshots taken", snapshots.clone());
        Self {
            registry,
            http_requests,
            http_seconds,
            proposals,
            proposals_failed,
            applied,
            leader_changes,
            term,
            is_leader,
            syncs,
            sync_seconds,
            snapshots,
        }
    }

    pub fn observe_http(&self, method: &str, code: u16, seconds: f64) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
        self.http_seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.observe_http("PUT", 201, 0.002);
        m.proposals.inc();
        m.sync_seconds.observe(0.0004);
        let text = m.render();
        assert!(
            text.contains(r#"flotilla_http_requests_total{method="PUT",code="201"} 1"#),
            "{text}"
        );
        assert!(text.contains("flotilla_raft_proposals_total 1"), "{text}");
        assert!(
            text.contains("flotilla_disk_sync_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
