//! `GET /metrics` in Prometheus' text format (the `prometheus-client` crate): requests by route and status,
//! prompt and completion tokens, queue depth and running sequences, time to first token and time between
//! tokens (histograms), resident adapters — each by model where it applies.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    prompt_tokens: Family<Labels, Counter>,
    prompt_tokens_cached: Family<Labels, Counter>,
    completion_tokens: Family<Labels, Counter>,
    cancelled: Family<Labels, Counter>,
    waiting: Family<Labels, Gauge>,
    running: Family<Labels, Gauge>,
    ttft: Family<Labels, Histogram>,
    itl: Family<Labels, Histogram>,
    adapters: Gauge<i64, AtomicI64>,
    images: Family<Labels, Counter>,
}

fn model(m: &str) -> Labels {
    vec![("model", m.to_string())]
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let requests = Family::<Labels, Counter>::default();
        let prompt_tokens = Family::<Labels, Counter>::default();
        let prompt_tokens_cached = Family::<Labels, Counter>::default();
        let completion_tokens = Family::<Labels, Counter>::default();
        let cancelled = Family::<Labels, Counter>::default();
        let waiting = Family::<Labels, Gauge>::default();
        let running = Family::<Labels, Gauge>::default();
        // 1 ms … 33 s
        let ttft = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let itl = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let adapters = Gauge::<i64, AtomicI64>::default();
        let images = Family::<Labels, Counter>::default();
        registry.register(
            "images",
            "Images in requests, by model and whether their features came from the cache",
            images.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "prompt_tokens_cached",
            "Prompt tokens taken from the prefix cache instead of being prefilled",
            prompt_tokens_cached.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        registry.register(
            "cancelled",
            "Sequences dropped because the client went away",
            cancelled.clone(),
        );
        registry.register(
            "queue_waiting",
            "Requests waiting to join the batch",
            waiting.clone(),
        );
        registry.register(
            "queue_running",
            "Sequences in the running batch",
            running.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From queued to the first token",
            ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Between two tokens of one sequence",
            itl.clone(),
        );
        registry.register(
            "adapters_resident",
            "LoRA adapters held in memory",
            adapters.clone(),
        );
        Self {
            registry,
            requests,
            prompt_tokens,
            prompt_tokens_cached,
            completion_tokens,
            cancelled,
            waiting,
            running,
            ttft,
            itl,
            adapters,
            images,
        }
    }
}

#[allow(clippy::cast_possible_wrap)] // counts far below i64::MAX
impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }
    pub fn set_queue(&self, m: &str, waiting: usize, running: usize) {
        self.waiting.get_or_create(&model(m)).set(waiting as i64);
        self.running.get_or_create(&model(m)).set(running as i64);
    }
    pub fn cancelled(&self, m: &str) {
        self.cancelled.get_or_create(&model(m)).inc();
    }
    pub fn first_token(&self, m: &str, d: Duration) {
        self.ttft.get_or_create(&model(m)).observe(d.as_secs_f64());
    }
    pub fn next_token(&self, m: &str, d: Duration) {
        self.itl.get_or_create(&model(m)).observe(d.as_secs_f64());
    }
    pub fn finished(&self, m: &str, prompt: usize, completion: usize) {
        self.prompt_tokens
            .get_or_create(&model(m))
            .inc_by(prompt as u64);
        self.completion_tokens
            .get_or_create(&model(m))
            .inc_by(completion as u64);
    }
    pub fn prompt_cached(&self, m: &str, n: usize) {
        self.prompt_tokens_cached
            .get_or_create(&model(m))
            .inc_by(n as u64);
    }
    pub fn image(&self, m: &str, cached: bool) {
        self.images
            .get_or_create(&vec![
                ("model", m.to_string()),
                ("cached", cached.to_string()),
            ])
            .inc();
    }
    pub fn set_adapters(&self, n: usize) {
        self.adapters.set(n as i64);
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
