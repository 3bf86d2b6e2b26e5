//! Prometheus metrics: the registry the server builds (no global one) and everything in it.
//! Request metrics are kept as they happen by the api layer's middleware ([`HttpMetrics`]:
//! a counter and a histogram per method and route template, one gauge); everything else is
//! read at scrape time by [`ScrapeCollector`] from numbers the services, the storage engine,
//! the connection layer and `/proc/self` keep anyway, so nothing else costs anything on the
//! request path. Served as OpenMetrics text on listeners with the `metrics` resource.

use std::{
    fmt::{self, Write as _},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, NoLabelSet,
    },
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::{
    net::NetStats,
    service::Services,
    storage::{TableStats, group_sync::BATCH_BUCKETS},
};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, in seconds: fast reads to long-polls.
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The server's metrics: the registry, and the request metrics the api layer updates.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Build the registry over the running server's parts.
    pub fn new(services: Arc<Services>, net: Arc<NetStats>) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::default();
        registry.register(
            "conduit_http_requests",
            "HTTP requests answered, by method, route template and status",
            http.requests.clone(),
        );
        registry.register_with_unit(
            "conduit_http_request_duration",
            "Time from a request's head to its answer, by method and route template",
            Unit::Seconds,
            http.duration.clone(),
        );
        registry.register(
            "conduit_http_requests_in_flight",
            "HTTP requests being answered now (long-polls included)",
            http.in_flight.clone(),
        );
        registry.register(
            "conduit_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ScrapeCollector { services, net }));
        Self { registry, http }
    }

    /// The whole exposition as OpenMetrics text.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The metrics updated for every request.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
        }
    }
}

impl HttpMetrics {
    /// Count one answered request.
    pub fn observe(&self, method: HttpMethod, route: Route, status: u16, elapsed: Duration) {
        self.duration
            .get_or_create(&RouteLabels { method, route: route.clone() })
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&RequestLabels { method, route, status }).inc();
    }
}

/// A request's method, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    OPTIONS,
    PATCH,
    OTHER,
}

/// A route template (`/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}`),
/// never a raw path, so the label's values are bounded by the routes.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Route(pub Arc<str>);

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: HttpMethod,
    pub route: Route,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: HttpMethod,
    pub route: Route,
}

/// Everything read at scrape time.
struct ScrapeCollector {
    services: Arc<Services>,
    net: Arc<NetStats>,
}

impl fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScrapeCollector")
    }
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// A gauge or counter family whose members are given at once.
fn family<L: EncodeLabelSet, V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    members: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
    ConstCounter<V>: EncodeMetric,
{
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in members {
        let member = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(member)?,
            _ => ConstGauge::new(value).encode(member)?,
        }
    }
    Ok(())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let services = &self.services;

        // Connections.
        let net = &self.net;
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        gauge(e, "conduit_connections_open", "Client connections open now", None, load(&net.open))?;
        counter(e, "conduit_connections_accepted", "Connections accepted", None, load(&net.accepted))?;
        counter(
            e,
            "conduit_connections_refused",
            "Connections closed at once because max_connections were open",
            None,
            load(&net.refused),
        )?;
        family(
            e,
            "conduit_connection_timeouts",
            "Connections or request bodies cut off, by which timeout",
            None,
            MetricType::Counter,
            [
                ("header", load(&net.header_timeouts)),
                ("body", load(&net.body_timeouts)),
                ("idle", load(&net.idle_closed)),
                ("tls_handshake", load(&net.tls_handshake_failures)),
            ]
            .map(|(kind, v)| ([("kind", kind)], v)),
        )?;

        // The stream and long-polls.
        let (reserved, committed) = services.stream.positions();
        family(
            e,
            "conduit_stream_position",
            "The stream's last reserved and committed positions",
            None,
            MetricType::Gauge,
            [([("kind", "reserved")], reserved), ([("kind", "committed")], committed)],
        )?;
        gauge(
            e,
            "conduit_stream_lag",
            "Positions reserved but not yet committed (writes in flight)",
            None,
            reserved.saturating_sub(committed),
        )?;
        gauge(
            e,
            "conduit_long_polls_waiting",
            "Long-polls (/sync, sliding sync, /events) waiting for a change now",
            None,
            services.stream.long_polls_waiting(),
        )?;
        gauge(
            e,
            "conduit_leading",
            "1 while this process runs the server's deliveries and background jobs (always, alone on its database)",
            None,
            i64::from(services.leader.is_leading()),
        )?;

        // Group commit.
        let group = services.group_sync_stats();
        // Per-bucket counts: the encoder makes them cumulative.
        let mut buckets: Vec<(f64, u64)> =
            BATCH_BUCKETS.iter().zip(group.buckets.iter()).map(|(&b, &n)| (b as f64, n)).collect();
        buckets.push((f64::INFINITY, group.buckets[BATCH_BUCKETS.len()]));
        let mut histogram = e.encode_descriptor(
            "conduit_group_commit_batch_size",
            "Writers made durable by one sync of the write-ahead log",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<NoLabelSet>(group.writers as f64, group.rounds, &buckets, None)?;

        // Storage.
        let store = services.store_stats();
        type Pick = fn(&TableStats) -> u64;
        let table_gauges: [(&str, &str, Option<Unit>, Pick); 4] = [
            ("conduit_rocksdb_estimated_keys", "Keys in each table, as RocksDB estimates them", None, |t| {
                t.estimated_keys
            }),
            ("conduit_rocksdb_live_sst", "Size of each table's live SST files", Some(Unit::Bytes), |t| {
                t.live_sst_bytes
            }),
            ("conduit_rocksdb_memtable", "Size of each table's memtables", Some(Unit::Bytes), |t| {
                t.memtable_bytes
            }),
            (
                "conduit_rocksdb_pending_compaction",
                "Bytes RocksDB estimates compaction must rewrite, per table",
                Some(Unit::Bytes),
                |t| t.pending_compaction_bytes,
            ),
        ];
        for (name, help, unit, pick) in table_gauges {
            family(
                e,
                name,
                help,
                unit.as_ref(),
                MetricType::Gauge,
                store.tables.iter().map(|t| ([("table", t.name)], pick(t))),
            )?;
        }
        gauge(
            e,
            "conduit_rocksdb_block_cache_usage",
            "Bytes in RocksDB's block cache",
            Some(&Unit::Bytes),
            store.block_cache_bytes,
        )?;
        gauge(
            e,
            "conduit_rocksdb_running_compactions",
            "Compactions running now",
            None,
            store.running_compactions,
        )?;
        family(
            e,
            "conduit_rocksdb_reads",
            "Storage reads: point reads, keys of multi-reads, scans begun",
            None,
            MetricType::Counter,
            [("get", store.gets), ("multi_get_key", store.multi_get_keys), ("scan", store.scans)]
                .map(|(op, v)| ([("op", op)], v)),
        )?;
        family(
            e,
            "conduit_rocksdb_writes",
            "Write batches applied, synced or buffered (made durable by group commit)",
            None,
            MetricType::Counter,
            [("synced", store.synced_writes), ("buffered", store.buffered_writes)]
                .map(|(kind, v)| ([("kind", kind)], v)),
        )?;
        counter(
            e,
            "conduit_rocksdb_written",
            "Bytes of write batches applied",
            Some(&Unit::Bytes),
            store.written_bytes,
        )?;
        counter(e, "conduit_rocksdb_wal_syncs", "Syncs of the write-ahead log", None, store.syncs)?;

        // Caches.
        let caches = services.cache_stats();
        family(
            e,
            "conduit_cache_hits",
            "Lookups answered from an in-memory cache",
            None,
            MetricType::Counter,
            caches.iter().map(|(name, s)| ([("cache", *name)], s.hits)),
        )?;
        family(
            e,
            "conduit_cache_misses",
            "Lookups an in-memory cache could not answer",
            None,
            MetricType::Counter,
            caches.iter().map(|(name, s)| ([("cache", *name)], s.misses)),
        )?;
        family(
            e,
            "conduit_cache_entries",
            "Entries in an in-memory cache now",
            None,
            MetricType::Gauge,
            caches.iter().map(|(name, s)| ([("cache", *name)], s.entries)),
        )?;
        family(
            e,
            "conduit_cache_size",
            "Bytes an in-memory cache holds now, as its entries are weighed",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            caches.iter().map(|(name, s)| ([("cache", *name)], s.bytes)),
        )?;
        family(
            e,
            "conduit_cache_budget",
            "Bytes an in-memory cache may hold (its share of cache_memory_mib)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            caches.iter().map(|(name, s)| ([("cache", *name)], s.budget)),
        )?;

        // Free memory given back to the system.
        let memory = services.memory.stats();
        counter(
            e,
            "conduit_memory_trims",
            "Times the allocator was asked to give its free memory back to the system",
            None,
            memory.trims,
        )?;
        counter(
            e,
            "conduit_memory_released",
            "Resident memory the process gave back to the system at those times",
            Some(&Unit::Bytes),
            memory.released_bytes,
        )?;

        // Outbound deliveries (push gateways, email).
        let outbox = services.outbox.stats();
        family(
            e,
            "conduit_outbox_queues",
            "Delivery queues running now, by kind (push, email)",
            None,
            MetricType::Gauge,
            outbox.iter().map(|(kind, s)| ([("kind", *kind)], s.queues)),
        )?;
        family(
            e,
            "conduit_outbox_deliveries",
            "Delivery attempts by kind and outcome (delivered, retried, dropped, given_up, gone)",
            None,
            MetricType::Counter,
            outbox.iter().flat_map(|(kind, s)| {
                [
                    ("delivered", s.delivered),
                    ("retried", s.retried),
                    ("dropped", s.dropped),
                    ("given_up", s.given_up),
                    ("gone", s.gone),
                ]
                .map(|(outcome, v)| ([("kind", *kind), ("outcome", outcome)], v))
            }),
        )?;

        encode_process(e)
    }
}

/// The standard `process_*` metrics, from `/proc/self`.
fn encode_process(e: &mut DescriptorEncoder) -> fmt::Result {
    let Some(process) = ProcessStats::read() else { return Ok(()) };
    gauge(e, "process_resident_memory", "Resident memory size", Some(&Unit::Bytes), process.resident_bytes)?;
    gauge(e, "process_virtual_memory", "Virtual memory size", Some(&Unit::Bytes), process.virtual_bytes)?;
    let cpu = ConstCounter::new(process.cpu_seconds);
    cpu.encode(e.encode_descriptor(
        "process_cpu",
        "User and system CPU time spent",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    gauge(e, "process_open_fds", "Open file descriptors", None, process.open_fds)?;
    gauge(e, "process_max_fds", "The limit of open file descriptors", None, process.max_fds)?;
    gauge(e, "process_threads", "Threads of the process", None, process.threads)?;
    gauge(
        e,
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Some(&Unit::Seconds),
        process.start_time_seconds,
    )
}

/// What `/proc/self` says of this process.
#[derive(Debug, Default)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Read `/proc/self/stat`, `/proc/self/fd` and `/proc/self/limits`; `None` where there
    /// is no procfs.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces; the fields after it follow its `)`.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // Field numbers of proc(5), minus 3 (state is field 3, index 0 here).
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        // SAFETY: sysconf reads constants.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100);
        let page = u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096);
        let cpu_ticks = field(14)? + field(15)?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))
        });
        let start_time_seconds = match boot_time {
            Some(boot) => boot as f64 + field(22)? as f64 / ticks as f64,
            None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
                line["Max open files".len()..].split_ascii_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        Some(Self {
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            cpu_seconds: cpu_ticks as f64 / ticks as f64,
            open_fds,
            max_fds,
            threads: field(20)?,
            start_time_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessStats;

    #[test]
    fn process_stats_read_this_process() {
        let stats = ProcessStats::read().expect("procfs");
        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.open_fds >= 3 && stats.max_fds >= stats.open_fds, "{stats:?}");
        assert!(stats.threads >= 1 && stats.start_time_seconds > 1.0e9, "{stats:?}");
    }
}
