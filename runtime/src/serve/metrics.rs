//! The server's Prometheus metrics (`GET /metrics`, text exposition format), all named
//! `idpatch_*`, kept in their own registry.
//!
//! Device memory (`idpatch_device_memory_bytes`) is what ONNX Runtime's arenas report for each
//! worker's graphs, read after the warm-up and after every job; tract reports none, so a tract
//! server exports no such series.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route and status code.
    pub requests: IntCounterVec,
    /// Generations refused before running, by reason (`queue_full`, `not_ready`, `draining`,
    /// `deadline`).
    pub rejected: IntCounterVec,
    /// Generations cancelled (client disconnect, DELETE or drain timeout).
    pub cancelled: IntCounter,
    /// Jobs waiting for a worker.
    pub queue_depth: IntGauge,
    /// Jobs running on a worker.
    pub in_flight: IntGauge,
    /// Workers whose graphs are loaded and warm.
    pub workers_ready: IntGauge,
    /// Seconds per stage (`prepare`, `queue`, `encode`, `denoise`, `decode`, `png`, `total`).
    pub stage_seconds: HistogramVec,
    /// Denoising steps run, all workers.
    pub steps: IntCounter,
    /// Denoising steps per second of the last finished generation.
    pub steps_per_second: Gauge,
    /// Bytes each worker's graphs hold per device, by `kind`: `in_use`, `reserved` (what the
    /// arenas took from the device) and `peak` (sum of the graphs' peaks).
    pub device_memory: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("idpatch_requests_total", "HTTP requests answered"),
            &["route", "status"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "idpatch_rejected_total",
                "Generations refused before running, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let cancelled = IntCounter::new("idpatch_cancelled_total", "Generations cancelled")
            .expect("valid metric");
        let queue_depth = IntGauge::new("idpatch_queue_depth", "Jobs waiting for a worker")
            .expect("valid metric");
        let in_flight =
            IntGauge::new("idpatch_in_flight", "Jobs running on a worker").expect("valid metric");
        let workers_ready = IntGauge::new(
            "idpatch_workers_ready",
            "Workers with graphs loaded and warmed up",
        )
        .expect("valid metric");
        // 5 ms to about 1.3 hours.
        let buckets = prometheus::exponential_buckets(0.005, 2.0, 20).expect("valid buckets");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("idpatch_stage_seconds", "Seconds per generation stage")
                .buckets(buckets),
            &["stage"],
        )
        .expect("valid metric");
        let steps = IntCounter::new("idpatch_denoising_steps_total", "Denoising steps run")
            .expect("valid metric");
        let steps_per_second = Gauge::new(
            "idpatch_denoising_steps_per_second",
            "Denoising steps per second of the last finished generation",
        )
        .expect("valid metric");
        let device_memory = IntGaugeVec::new(
            Opts::new(
                "idpatch_device_memory_bytes",
                "Bytes a worker's graphs hold per device, as ONNX Runtime's arenas report them",
            ),
            &["worker", "device", "kind"],
        )
        .expect("valid metric");
        let metrics = Metrics {
            registry,
            requests,
            rejected,
            cancelled,
            queue_depth,
            in_flight,
            workers_ready,
            stage_seconds,
            steps,
            steps_per_second,
            device_memory,
        };
        metrics.register();
        // Every reason's series exists from the start (at 0), so queries and alerts on it find
        // the series before the first refusal.
        for reason in [
            "queue_full",
            "not_ready",
            "draining",
            "deadline",
            "connections",
        ] {
            metrics.rejected.with_label_values(&[reason]);
        }
        metrics
    }

    fn register(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 10] = [
            Box::new(self.requests.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.cancelled.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.workers_ready.clone()),
            Box::new(self.stage_seconds.clone()),
            Box::new(self.steps.clone()),
            Box::new(self.steps_per_second.clone()),
            Box::new(self.device_memory.clone()),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric names are unique");
        }
    }

    /// Records the seconds one stage took.
    pub fn observe(&self, stage: &str, seconds: f64) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(seconds);
    }

    /// Sets worker `worker`'s device-memory gauges.
    pub fn set_device_memory(&self, worker: usize, memory: &[crate::backend::MemoryUse]) {
        let worker = worker.to_string();
        for m in memory {
            for (kind, bytes) in [
                ("in_use", m.in_use),
                ("reserved", m.reserved),
                ("peak", m.peak),
            ] {
                self.device_memory
                    .with_label_values(&[worker.as_str(), m.device.as_str(), kind])
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
