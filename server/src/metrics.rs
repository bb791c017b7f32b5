//! What a node tells Prometheus: a registry per node ([`Metrics`]), the gRPC layer that counts
//! and times every request ([`RequestMetricsLayer`]), and the HTTP endpoint that serves the
//! text format (`--metrics-addr`, off by default).
//!
//! Counters and histograms are updated where things happen (a request finishing, a proposal
//! applied, a flush); gauges that mirror state (term, indexes, namespace sizes) are read when
//! Prometheus scrapes, so that nothing is computed for nobody. Every metric name starts with
//! `dlock_`; `docs/operations.md` lists them with what to alert on.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Error;
use crate::replica::{Replica, lock};

/// Latency buckets in seconds for requests and proposals: 0.5 ms to 10 s. Blocking waits
/// last longer; they land in the +Inf bucket, which is what they are.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Buckets for fsync latency: 50 µs to 1 s.
const FLUSH_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// The gRPC method label used for paths that are not `/package.Service/Method`.
const UNKNOWN_METHOD: &str = "unknown";

/// One node's metrics. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: mirroring the raft thread's totals into counters reads and then
    /// adds, which two concurrent scrapes would both do.
    rendering: std::sync::Mutex<()>,
    term: IntGauge,
    role: IntGaugeVec,
    has_leader: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    leader_changes: IntCounter,
    proposals: IntCounterVec,
    proposal_seconds: Histogram,
    flush_seconds: Histogram,
    snapshots: IntCounter,
    snapshot_bytes: IntGauge,
    sessions: IntGauge,
    objects: IntGauge,
    handles: IntGauge,
    waits_pending: IntGauge,
    waits_blocked: IntGauge,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
}

/// Registers `metric` in `registry` and returns it (every name here is fixed and unique, so
/// registration cannot fail).
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// A fresh registry with every dlock metric at zero.
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| {
            registered(&r, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            registered(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            registered(&r, Histogram::with_opts(opts).expect("valid metric"))
        };
        let metrics = Metrics {
            term: gauge("dlock_raft_term", "Current Raft term."),
            role: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("dlock_raft_role", "1 for this node's current Raft role."),
                    &["role"],
                )
                .expect("valid metric"),
            ),
            has_leader: gauge("dlock_raft_has_leader", "1 if this node knows a leader."),
            commit_index: gauge(
                "dlock_raft_commit_index",
                "Highest log index known committed.",
            ),
            applied_index: gauge(
                "dlock_raft_applied_index",
                "Highest log index applied to the namespace.",
            ),
            leader_changes: counter(
                "dlock_raft_leader_changes_total",
                "Leader changes this node observed since it started.",
            ),
            proposals: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "dlock_raft_proposals_total",
                        "Client commands proposed through this node, by outcome.",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            proposal_seconds: histogram(
                "dlock_raft_proposal_seconds",
                "Time from proposing a command until it is applied on this node.",
                LATENCY_BUCKETS,
            ),
            flush_seconds: histogram(
                "dlock_raft_flush_seconds",
                "Duration of one flush (fsync) of the Raft log.",
                FLUSH_BUCKETS,
            ),
            snapshots: counter(
                "dlock_raft_snapshots_total",
                "Snapshots stored (taken or installed) since start.",
            ),
            snapshot_bytes: gauge(
                "dlock_raft_snapshot_bytes",
                "Size of the last snapshot stored since start.",
            ),
            sessions: gauge("dlock_sessions", "Open sessions."),
            objects: gauge("dlock_objects", "Live named and unnamed objects."),
            handles: gauge("dlock_handles", "Open handles."),
            waits_pending: gauge("dlock_waits_pending", "Queued waits in the namespace."),
            waits_blocked: gauge(
                "dlock_waits_blocked",
                "AwaitWait calls blocked on this node.",
            ),
            requests: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "dlock_grpc_requests_total",
                        "gRPC requests served, by method and status code.",
                    ),
                    &["method", "code"],
                )
                .expect("valid metric"),
            ),
            request_seconds: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "dlock_grpc_request_seconds",
                        "Time until the response headers of a gRPC request, by method.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["method"],
                )
                .expect("valid metric"),
            ),
            registry: r,
            rendering: std::sync::Mutex::new(()),
        };
        // Series that exist from the start, so that dashboards and alerts see zeros, not gaps.
        for outcome in ["ok", "error"] {
            metrics.proposals.with_label_values(&[outcome]);
        }
        Arc::new(metrics)
    }

    /// Records one proposal that took `took` and succeeded or not.
    pub fn proposal(&self, took: Duration, ok: bool) {
        self.proposals
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.proposal_seconds.observe(took.as_secs_f64());
        }
    }

    /// Records one served request.
    fn request(&self, method: &str, code: &str, took: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.request_seconds
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// Reads the mirrored gauges from the node and the replica, and renders every metric in
    /// the Prometheus text format.
    pub fn render(&self, node: &dlock_cluster::Node, replica: &Replica) -> String {
        // Guards nothing but the order of scrapes: a panic in one leaves nothing to repair.
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        let status = node.status();
        self.term.set(clamp(status.term));
        for role in ["follower", "pre_candidate", "candidate", "leader"] {
            self.role.with_label_values(&[role]).set(0);
        }
        let role = match status.role {
            dlock_cluster::Role::Follower => "follower",
            dlock_cluster::Role::PreCandidate => "pre_candidate",
            dlock_cluster::Role::Candidate => "candidate",
            dlock_cluster::Role::Leader => "leader",
        };
        self.role.with_label_values(&[role]).set(1);
        self.has_leader.set(i64::from(status.leader_id.is_some()));
        self.commit_index.set(clamp(status.commit));
        self.applied_index.set(clamp(status.applied));
        catch_up(&self.leader_changes, status.leader_changes);
        catch_up(&self.snapshots, status.snapshots);
        self.snapshot_bytes.set(clamp(status.snapshot_bytes));
        let counts = lock(&replica.ns).counts();
        self.sessions.set(counts.sessions as i64);
        self.objects.set(counts.objects as i64);
        self.handles.set(counts.handles as i64);
        self.waits_pending.set(counts.waits as i64);
        let blocked: usize = lock(&replica.waiters).values().map(Vec::len).sum();
        self.waits_blocked.set(blocked as i64);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding failed: {err}\n"))
    }
}

impl dlock_cluster::Observer for Metrics {
    fn flushed(&self, took: Duration) {
        self.flush_seconds.observe(took.as_secs_f64());
    }
}

/// A `u64` as a gauge value (indexes never reach `i64::MAX` in practice).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Advances `counter` to the cumulative `total` the raft thread reports.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Serves `GET /metrics` on `listener` until `stopped` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    node: dlock_cluster::Node,
    replica: Arc<Replica>,
    mut stopped: watch::Receiver<bool>,
) {
    use axum::http::header::CONTENT_TYPE;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render(&node, &replica);
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    );
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %err, "metrics endpoint failed");
    }
}

/// Binds the metrics endpoint.
///
/// # Errors
///
/// `Error::Io` naming the address if it cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {addr} (metrics address)"),
            source,
        })?;
    if let Ok(bound) = listener.local_addr() {
        info!(metrics_addr = %bound, "serving Prometheus metrics at /metrics");
    }
    Ok(listener)
}

/// A tower layer for the client API's gRPC server: counts every request by method and status
/// code and times it until its response headers. The code is the `grpc-status` of the headers
/// (an error returned by a handler travels there); a response without one started
/// successfully and counts as `OK` (a stream that fails later is not recounted).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RequestMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RequestMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(tonic::Code::from(code))),
                Err(_) => "TRANSPORT_ERROR",
            };
            metrics.request(method, code, started.elapsed());
            result
        })
    }
}

/// The method label of a gRPC path: `Dlock/Create` for `/dlock.v1.Dlock/Create`. Only the
/// methods the client port serves get their own label, so the label set stays bounded
/// whatever paths clients send.
fn method_label(path: &str) -> &'static str {
    const METHODS: &[&str] = &[
        "Dlock/OpenSession",
        "Dlock/KeepAlive",
        "Dlock/CloseSession",
        "Dlock/Create",
        "Dlock/Open",
        "Dlock/CloseHandle",
        "Dlock/ReleaseMutex",
        "Dlock/SetEvent",
        "Dlock/ResetEvent",
        "Dlock/PulseEvent",
        "Dlock/ReleaseSemaphore",
        "Dlock/Wait",
        "Dlock/SignalAndWait",
        "Dlock/AwaitWait",
        "Dlock/CancelWait",
        "Dlock/ThreadExit",
        "Dlock/Query",
        "Dlock/CheckFencingToken",
        "Admin/AddVoter",
        "Admin/AddLearner",
        "Admin/PromoteLearner",
        "Admin/RemoveNode",
        "Admin/Status",
        "Admin/ListObjects",
        "Admin/ListSessions",
        "Health/Check",
        "Health/Watch",
    ];
    let short = path
        .strip_prefix("/dlock.v1.")
        .or_else(|| path.strip_prefix("/grpc.health.v1."));
    short
        .and_then(|short| METHODS.iter().find(|m| **m == short))
        .copied()
        .unwrap_or(UNKNOWN_METHOD)
}

/// The conventional upper-case name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
