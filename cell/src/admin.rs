//! The admin port: `/metrics` (as on the main port), `/live` (the process answers),
//! `/ready` (servers bound and not draining; 503 otherwise) and `/info` (JSON: identity,
//! admission state, downstream addresses, listen addresses).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;

use crate::app::App;
use crate::http::serve_metrics;

/// The admin routes.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .with_state(app)
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn info(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(app.info())
}
