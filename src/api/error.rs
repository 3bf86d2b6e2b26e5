//! The single place where an `Error` becomes an HTTP response: Matrix error JSON with the
//! right status. Internal causes are logged here, once, and replaced by a generic message.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use ruma::api::{
    client::uiaa::UiaaInfo,
    error::{ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody},
};

use crate::Error;

/// The status the spec (or Synapse, where the spec is silent) gives each errcode.
pub fn status_for(kind: &ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Forbidden
        | ErrorKind::GuestAccessForbidden
        | ErrorKind::UserDeactivated
        | ErrorKind::UserSuspended
        | ErrorKind::CannotLeaveServerNoticeRoom
        | ErrorKind::ThreepidDenied
        | ErrorKind::WrongRoomKeysVersion(_) => StatusCode::FORBIDDEN,
        ErrorKind::UnknownToken(_)
        | ErrorKind::MissingToken
        | ErrorKind::Unauthorized
        | ErrorKind::UserLocked => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
        // `M_SERVER_NOT_TRUSTED` and the other third-party identifier errors are 400s in
        // the spec (its request-token endpoints); `M_THREEPID_DENIED` alone is a 403.
        ErrorKind::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::CannotOverwriteMedia => StatusCode::CONFLICT,
        ErrorKind::NotYetUploaded | ErrorKind::ConnectionTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::BadStatus(_) | ErrorKind::ConnectionFailed => StatusCode::BAD_GATEWAY,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "serialising an error body failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn standard(status: StatusCode, kind: ErrorKind, message: &str) -> Response {
    let soft_logout = match &kind {
        ErrorKind::UnknownToken(data) => Some(data.soft_logout),
        _ => None,
    };
    // A limit that lifts at a known time says so in the header too, rounded up to whole
    // seconds (the body's `retry_after_ms` keeps the milliseconds), as Synapse does.
    let retry_after = match &kind {
        ErrorKind::LimitExceeded(LimitExceededErrorData {
            retry_after: Some(RetryAfter::Delay(delay)),
            ..
        }) => Some(u64::try_from(delay.as_millis().div_ceil(1000)).unwrap_or(u64::MAX)),
        _ => None,
    };
    let mut body = match serde_json::to_value(StandardErrorBody::new(kind, message.to_owned())) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    // ruma leaves out `soft_logout: false`; clients (and Synapse) expect it spelled out.
    if let Some(soft_logout) = soft_logout {
        body.insert("soft_logout".to_owned(), soft_logout.into());
    }
    let mut response = json(status, &body);
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    response
}

/// The 401 body of user-interactive auth: the info object (ruma flattens the failed stage's
/// `errcode`/`error` into it), with `completed` always present.
fn uiaa(info: &UiaaInfo) -> Response {
    let mut body = match serde_json::to_value(info) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return standard(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown, "Internal server error"),
    };
    // ruma omits an empty `completed`; Synapse always sends it and some clients read it.
    body.entry("completed").or_insert_with(|| serde_json::json!([]));
    json(StatusCode::UNAUTHORIZED, &body)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix { kind, message } => standard(status_for(&kind), kind, &message),
            Error::MethodNotAllowed => {
                standard(StatusCode::METHOD_NOT_ALLOWED, ErrorKind::Unrecognized, "Unrecognized request")
            }
            Error::MalformedPath(message) => {
                standard(StatusCode::BAD_REQUEST, ErrorKind::Unrecognized, &message)
            }
            Error::Uiaa(info) => uiaa(&info),
            Error::OAuth { code, description } => {
                let status =
                    if code == "invalid_client" { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
                let mut response =
                    json(status, &serde_json::json!({ "error": code, "error_description": description }));
                response.headers_mut().insert(
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                );
                response
            }
            Error::Conflict(message) => standard(StatusCode::CONFLICT, ErrorKind::Unknown, &message),
            Error::RequestTimeout(message) => {
                standard(StatusCode::REQUEST_TIMEOUT, ErrorKind::Unknown, &message)
            }
            Error::Upstream(message) => standard(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, &message),
            Error::Unavailable(message) => {
                standard(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unknown, &message)
            }
            Error::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                standard(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown, "Internal server error")
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal failure");
                standard(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown, "Internal server error")
            }
        }
    }
}

/// An error as a page for a browser (single sign-on's redirects and callback): the status
/// the JSON answer would have, the errcode and the message. Internal causes are logged and
/// replaced, as for JSON.
pub fn error_page(error: Error) -> Response {
    let (status, kind, message) = match error {
        Error::Matrix { kind, message } => (status_for(&kind), kind, message),
        Error::Upstream(message) => (StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message),
        Error::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unknown, message),
        Error::OAuth { description, .. } => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, description),
        Error::Uiaa(_)
        | Error::MethodNotAllowed
        | Error::MalformedPath(_)
        | Error::Conflict(_)
        | Error::RequestTimeout(_) => {
            return error.into_response();
        }
        Error::Storage(e) => {
            tracing::error!(error = %e, "storage failure");
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown, "Internal server error".to_owned())
        }
        Error::Internal(e) => {
            tracing::error!(error = %e, "internal failure");
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown, "Internal server error".to_owned())
        }
    };
    let errcode = serde_json::to_value(StandardErrorBody::new(kind, String::new()))
        .ok()
        .and_then(|body| body.get("errcode").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "M_UNKNOWN".to_owned());
    let body = format!(
        "<p>{}</p>\n<p><small>{} ({})</small></p>",
        super::sso::escape(&message),
        super::sso::escape(&errcode),
        status.as_u16()
    );
    super::sso::page(status, "Sign-in failed", &body, None)
}
