//! Prometheus metrics: per-RPC counters and latencies and the IaaS client's
//! call counters, served over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A registry holding the RPC metrics and the cloud client's call metrics
/// (when there is a client).
pub fn registry(rpc: &Arc<RpcMetrics>, cloud: Option<&iaas_client::Client>) -> Arc<Registry> {
    let mut registry = Registry::with_prefix("csi_driver");
    rpc.register(&mut registry);
    if let Some(client) = cloud {
        client.register_metrics(&mut registry);
    }
    Arc::new(registry)
}

/// Serves `/metrics` on `addr` until the process exits.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        format!("encoding failed: {e}"),
                    ),
                }
            }
        }),
    );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "serving metrics");
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "cannot bind metrics address"),
    }
}

type Labels = Vec<(String, String)>;
type Histogram = prometheus_client::metrics::histogram::Histogram;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Per-RPC counters and latencies, recorded by [`RpcMetricsLayer`].
#[derive(Debug)]
pub struct RpcMetrics {
    calls: Family<Labels, prometheus_client::metrics::counter::Counter>,
    seconds: HistogramFamily,
}

fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 5 ms .. ~80 s: CSI calls range from a Describe to a mkfs plus a job wait.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15),
    )
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        RpcMetrics {
            calls: Default::default(),
            seconds: prometheus_client::metrics::family::Family::new_with_constructor(
                latency_histogram,
            ),
        }
    }

    /// Adds the metrics to `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "rpc_calls",
            "CSI calls by method and gRPC code",
            self.calls.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "CSI call latency by method",
            self.seconds.clone(),
        );
    }

    fn record(&self, method: &str, code: &str, elapsed: std::time::Duration) {
        // "/csi.v1.Node/NodeStageVolume" -> "NodeStageVolume".
        let short = method.rsplit('/').next().unwrap_or(method).to_string();
        self.calls
            .get_or_create(&vec![
                ("method".into(), short.clone()),
                ("code".into(), code.into()),
            ])
            .inc();
        self.seconds
            .get_or_create(&vec![("method".into(), short)])
            .observe(elapsed.as_secs_f64());
    }
}

/// A tower layer recording [`RpcMetrics`] for every gRPC call.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// The service made by [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<axum::http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // Errors travel as trailers-only responses, with grpc-status in
            // the headers; a success carries it in the trailers instead.
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".to_string()),
                Err(_) => "Transport".to_string(),
            };
            metrics.record(&method, &code, start.elapsed());
            res
        })
    }
}
