//! The audit log over HTTP: admins read it at `GET /_conduit/admin/v1/audit_log` and check its
//! hash chain at `GET /_conduit/admin/v1/audit_log/verify`; and every call to the admin API
//! (`/_synapse/admin/...`, `/_conduit/admin/...`) is itself recorded, by [`record_admin_calls`].

use std::sync::{Arc, Mutex};

use axum::{
    Json,
    extract::{MatchedPath, RawQuery, Request, State},
    middleware::Next,
    response::Response,
};
use serde_json::{Map, Value as JsonValue, json};

use super::AdminCaller;
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
    service::{
        audit::{self, Entry, MAX_QUERY_LIMIT},
        context::RequestContext,
    },
};

/// `GET /_conduit/admin/v1/audit_log`: `{"records": [...], "next_batch": "..."}`, newest first
/// unless `dir=f`; `next_batch` is absent at the end. Filters: `actor`, `target`, `action`,
/// `from_ts`, `to_ts` (milliseconds); paging: `from`, `limit`.
pub async fn audit_log(
    State(services): State<AppState>,
    _: AdminCaller,
    RawQuery(raw): RawQuery,
) -> Result<Json<JsonValue>> {
    let query = parse_query(raw.as_deref().unwrap_or(""))?;
    let (records, next) = services.audit.query(&query)?;
    let mut answer = json!({ "records": records });
    if let Some(next) = next {
        answer["next_batch"] = next.to_string().into();
    }
    Ok(Json(answer))
}

/// The audit log query from a query string, each bad value a Matrix error naming it.
fn parse_query(raw: &str) -> Result<audit::Query> {
    let number = |name: &str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| Error::invalid_param(format!("`{name}` must be a non-negative integer")))
    };
    let mut query = audit::Query { limit: 100, ..audit::Query::default() };
    for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "actor" => query.actor = Some(value.into_owned()),
            "target" => query.target = Some(value.into_owned()),
            "action" => query.action = Some(value.into_owned()),
            "from_ts" => query.from_ts = Some(number("from_ts", &value)?),
            "to_ts" => query.to_ts = Some(number("to_ts", &value)?),
            "from" => query.from = Some(number("from", &value)?),
            "limit" => {
                query.limit =
                    usize::try_from(number("limit", &value)?).unwrap_or(MAX_QUERY_LIMIT).min(MAX_QUERY_LIMIT)
            }
            "dir" => {
                query.forwards = match value.as_ref() {
                    "f" => true,
                    "b" => false,
                    _ => return Err(Error::invalid_param("`dir` must be `f` or `b`")),
                }
            }
            _ => {}
        }
    }
    Ok(query)
}

/// `GET /_conduit/admin/v1/audit_log/verify`: the hash chain checked end to end.
pub async fn verify(State(services): State<AppState>, _: AdminCaller) -> Result<Json<JsonValue>> {
    let report = services.audit.verify()?;
    Ok(Json(json!({
        "valid": report.broken_at.is_none(),
        "records": report.records,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "broken_at": report.broken_at,
    })))
}

/// Where the admin extractor leaves the caller's context for [`record_admin_calls`]: the
/// layer runs outside the handler, so it hands the handler an empty slot to fill.
#[derive(Clone, Default)]
pub struct CallerSlot(Arc<Mutex<Option<RequestContext>>>);

impl CallerSlot {
    pub fn fill(&self, context: &RequestContext) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(context.clone());
        }
    }

    fn take(&self) -> Option<RequestContext> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Whether `path` is under an admin API.
pub fn is_admin_path(path: &str) -> bool {
    path.starts_with("/_synapse/admin/") || path.starts_with("/_conduit/admin/")
}

/// The layer that records each admin API call made by an authenticated user, admin or not
/// (a refused attempt is worth knowing about): method, route, path parameters, query and
/// JSON body with secrets masked, and the answer's status. Reads of the audit log itself are
/// not recorded, or reading it would grow it.
pub async fn record_admin_calls(State(services): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !is_admin_path(path) || path.starts_with("/_conduit/admin/v1/audit_log") {
        return next.run(request).await;
    }
    // Boxed: every request passes here, and a long-poll's future should not be sized by
    // what recording an admin call keeps.
    Box::pin(record_admin_call(services, request, next)).await
}

/// An admin API call, answered and recorded in the audit log with its method, path, query,
/// body and status.
async fn record_admin_call(services: AppState, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let method = request.method().to_string();
    let query = request.uri().query().map(query_params);
    let slot = CallerSlot::default();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(slot.clone());
    // The body is read here to record it; the handler reads the copy. Bodies past the limit
    // are refused as the handler would refuse them.
    let bytes = match limited_body(&services, body).await {
        Ok(bytes) => bytes,
        Err(error) => return axum::response::IntoResponse::into_response(error),
    };
    let body_json = serde_json::from_slice::<JsonValue>(&bytes).ok();
    let response = next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await;

    if let Some(context) = slot.take() {
        let status = response.status();
        let entry = if status.is_success() {
            Entry::success("admin.request")
        } else {
            Entry::failure("admin.request")
        };
        let entry = entry.target(route.as_deref().unwrap_or(&path)).params(json!({
            "method": method,
            "path": path,
            "query": query,
            "body": body_json,
            "status": status.as_u16(),
        }));
        services.audit.record_or_log(&context, entry);
    }
    response
}

/// A query string as a JSON object, the access token left out.
fn query_params(query: &str) -> JsonValue {
    let mut params = Map::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "access_token" {
            params.insert(key.into_owned(), value.into_owned().into());
        }
    }
    JsonValue::Object(params)
}
