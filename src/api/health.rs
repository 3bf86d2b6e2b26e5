//! Health checks for load balancers and supervisors, on every listener whatever its
//! resources: `GET /health` answers `OK` while the process serves (as Synapse's does), and
//! `GET /_conduit/ready` answers `200` only while the database answers too, `503` otherwise,
//! so a balancer takes a process that lost its database out of rotation.

use std::time::Duration;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::AppState;

/// Liveness.
pub const HEALTH_PATH: &str = "/health";
/// Readiness.
pub const READY_PATH: &str = "/_conduit/ready";

/// How long readiness waits for the database before it says no.
const STORAGE_DEADLINE: Duration = Duration::from_secs(2);

/// Whether `path` is one of the health checks, which every listener serves.
pub fn is_health_path(path: &str) -> bool {
    path == HEALTH_PATH || path == READY_PATH
}

/// `GET /health`: `200 OK`, plain text.
pub async fn health() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK").into_response()
}

/// `GET /_conduit/ready`: `{"status": "ready"}`, or `503` with the reason.
pub async fn ready(State(services): State<AppState>) -> Response {
    let check = tokio::task::spawn_blocking(move || services.check_storage());
    // The reason is logged, not answered: the path is public, and a database error may name
    // the database's host.
    let failure = match tokio::time::timeout(STORAGE_DEADLINE, check).await {
        Ok(Ok(Ok(()))) => return axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Ok(Err(e))) => format!("the database does not answer, or its bus is lost: {e}"),
        Ok(Err(_)) => "the database check stopped".to_owned(),
        Err(_) => format!("the database did not answer within {} s", STORAGE_DEADLINE.as_secs()),
    };
    tracing::warn!(reason = %failure, "not ready");
    let body = serde_json::json!({"status": "unavailable", "reason": "the database does not answer"});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}
