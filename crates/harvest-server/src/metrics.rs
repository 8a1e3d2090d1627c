//! Prometheus metrics: one process-wide recorder, HTTP request counters by route and
//! status, and process RSS and CPU sampled on every scrape.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Handle to the process-wide metrics recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: Arc<metrics_process::Collector>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// The process-wide recorder, installed on first use (several servers in one
    /// process, as in tests, share it).
    pub fn global() -> Self {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let handle = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                    .expect("static buckets are valid")
                    .install_recorder()
                    .expect("the metrics recorder is installed once");
                let process = metrics_process::Collector::default();
                process.describe();
                describe();
                export_zeros();
                Metrics {
                    handle,
                    process: Arc::new(process),
                }
            })
            .clone()
    }

    /// The Prometheus text exposition of every metric, process figures refreshed.
    pub fn render(&self) -> String {
        self.process.collect();
        delivered::publish();
        self.handle.run_upkeep();
        with_precise_cpu(self.handle.render(), process_cpu_seconds())
    }
}

/// `harvest_events_delivered_total`: every connection's writer adds to it with each
/// frame, from every worker thread at once. A shared counter would bounce its cache line
/// between the cores with every frame; each thread adds to a shard of its own instead,
/// and the shards are summed into the counter when metrics are rendered.
pub mod delivered {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    const SHARDS: usize = 32;

    /// One thread's counts per lane (room, social, private), alone on its cache line.
    #[repr(align(128))]
    struct Shard([AtomicU64; 3]);

    static SHARD: [Shard; SHARDS] = [const { Shard([const { AtomicU64::new(0) }; 3]) }; SHARDS];
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    fn mine() -> &'static Shard {
        let i = MINE.with(|m| {
            if m.get() == usize::MAX {
                m.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            m.get()
        });
        &SHARD[i]
    }

    /// Counts the events of one frame written to a socket, per lane.
    pub fn add(counts: [u32; 3]) {
        let shard = mine();
        for (slot, n) in shard.0.iter().zip(counts) {
            if n > 0 {
                slot.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
    }

    /// Events delivered so far per lane (room, social, private).
    pub fn totals() -> [u64; 3] {
        let mut sum = [0u64; 3];
        for shard in &SHARD {
            for (total, slot) in sum.iter_mut().zip(&shard.0) {
                *total += slot.load(Ordering::Relaxed);
            }
        }
        sum
    }

    /// Sets the counter to the sum of the shards.
    pub(super) fn publish() {
        for (lane, total) in ["room", "social", "private"].into_iter().zip(totals()) {
            metrics::counter!("harvest_events_delivered_total", "lane" => lane).absolute(total);
        }
    }
}

/// User plus system CPU time of this process, in seconds, to the microsecond.
fn process_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}

/// Counters of the metrics facade are integers, which would round the CPU time down
/// to whole seconds: the sample line is rewritten with the precise value.
fn with_precise_cpu(text: String, cpu: Option<f64>) -> String {
    let Some(cpu) = cpu else { return text };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("process_cpu_seconds_total ") {
            out.push_str(&format!("process_cpu_seconds_total {cpu:.6}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn describe() {
    metrics::describe_counter!(
        "harvest_http_requests_total",
        "HTTP requests answered, by route template and status code"
    );
    metrics::describe_histogram!(
        "harvest_http_request_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route template"
    );
    metrics::describe_counter!(
        "harvest_reservations_total",
        "Flash-sale reservations answered, by outcome (held or the error code)"
    );
    metrics::describe_histogram!(
        "harvest_reservation_seconds",
        metrics::Unit::Seconds,
        "Time to answer a reservation, engine call included"
    );
}

/// Exports the series that only move on rare events (drops, 4008 closes, journaled
/// orders) from the start, at zero, so dashboards and alerts see a value rather than
/// no data on a healthy node.
fn export_zeros() {
    for lane in harvest_hub::Lane::ALL.map(harvest_hub::Lane::as_str) {
        for name in [
            "harvest_events_published_total",
            "harvest_events_delivered_total",
            "harvest_events_dropped_total",
        ] {
            metrics::counter!(name, "lane" => lane).increment(0);
        }
    }
    metrics::counter!("harvest_slow_consumer_disconnects_total").increment(0);
    for status in ["paid", "late", "failed"] {
        metrics::counter!("harvest_orders_total", "status" => status).increment(0);
    }
    for name in [
        "harvest_ws_connections",
        "harvest_rooms",
        "harvest_journal_depth",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

/// Middleware counting every answered request by route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("harvest_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("harvest_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_rewritten_precisely() {
        let text =
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0\nother 1\n";
        let out = with_precise_cpu(text.to_owned(), Some(0.634_2));
        assert!(
            out.contains("process_cpu_seconds_total 0.634200\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(out.contains("other 1\n"));
        assert!(process_cpu_seconds().is_some_and(|s| s > 0.0));
    }
}
