//! The admin API, an HTTP listener apart from the Kafka ones (port 9644 by default):
//!
//! - `GET /metrics`: every metric of [`crate::metrics`], in the OpenMetrics text format
//!   Prometheus scrapes;
//! - `GET /health`: 200 while the process runs (liveness);
//! - `GET /ready`: 200 once the broker serves clients, 503 with the reason before that
//!   (starting, fenced, shutting down) (readiness).
//!
//! The listener is up before the broker has opened its logs and joined the cluster, so
//! that `/health` answers during a long start; [`AdminApi::serving`] hands it the broker
//! once the Kafka listeners take connections.

use std::sync::{Arc, OnceLock, Weak};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::BrokerState;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin API serves from: the broker, once it serves.
#[derive(Default)]
pub struct AdminApi {
    broker: OnceLock<Weak<BrokerState>>,
}

impl AdminApi {
    pub fn new() -> Arc<AdminApi> {
        Arc::new(AdminApi::default())
    }

    /// The broker serves clients from now on.
    pub fn serving(&self, broker: &Arc<BrokerState>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    fn broker(&self) -> Option<Arc<BrokerState>> {
        self.broker.get().and_then(Weak::upgrade)
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    api: Arc<AdminApi>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(api);
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

fn unavailable(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
}

async fn metrics(State(api): State<Arc<AdminApi>>) -> Response {
    let Some(broker) = api.broker() else {
        return unavailable("starting");
    };
    match broker.metrics.render(&broker) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(api): State<Arc<AdminApi>>) -> Response {
    let Some(broker) = api.broker() else {
        return unavailable("starting");
    };
    match broker.not_ready() {
        None => "ready\n".into_response(),
        Some(reason) => unavailable(reason),
    }
}
