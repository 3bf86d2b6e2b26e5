//! The one error type. Each error is created where the decision is made, carries the Matrix
//! errcode and a message for the client, and is turned into HTTP in exactly one place
//! (`api::error`). Internal causes are logged there and never sent.

use ruma::api::{
    client::uiaa::UiaaInfo,
    error::{
        ErrorKind, LimitExceededErrorData, RetryAfter, UnknownTokenErrorData, WrongRoomKeysVersionErrorData,
    },
};

use crate::storage::StorageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request refused for a reason the client should see.
    #[error("{kind:?}: {message}")]
    Matrix { kind: ErrorKind, message: String },
    /// The path exists but not for this HTTP method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A path under a known family of endpoints that names none of them (a push rule path
    /// with another scope or an unknown kind): 400 `M_UNRECOGNIZED`, as Synapse answers,
    /// rather than the 404 of an unknown endpoint.
    #[error("malformed path: {0}")]
    MalformedPath(String),
    /// User-interactive authentication is needed or a stage failed; the body says what next.
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    /// The request clashes with something that exists (409, `M_UNKNOWN`, as the spec says
    /// for a taken room alias).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Something this server fetched on the client's behalf (a page to preview) failed or
    /// answered an error (502, `M_UNKNOWN`); the message says what.
    #[error("upstream: {0}")]
    Upstream(String),
    /// A service this server depends on to answer (the LDAP directory) cannot be reached or
    /// did not answer in time (503, `M_UNKNOWN`); the message names it, and says nothing
    /// the log does not.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An OAuth 2.0 endpoint refused the request (RFC 6749 §5.2, RFC 7591 §3.2.2): the
    /// RFC's error code and a description, answered as `{"error", "error_description"}`
    /// with 400, or 401 for `invalid_client`.
    #[error("oauth: {code}: {description}")]
    OAuth { code: &'static str, description: String },
    /// The request body stalled past `request_body_timeout` (408, `M_UNKNOWN`).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Any other internal failure; the string is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An OAuth 2.0 refusal with the RFC's `code`.
    pub fn oauth(code: &'static str, description: impl Into<String>) -> Self {
        Error::OAuth { code, description: description.into() }
    }

    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix { kind, message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// `what` (a user, alias or room) lives on another server, and this one does not
    /// federate: `404 M_NOT_FOUND` saying so, rather than a bare "not found".
    pub fn on_another_server(what: impl std::fmt::Display) -> Self {
        Self::not_found(format!("{what} is on another server, and this server does not federate"))
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }

    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotJson, message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }

    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::MissingParam, message)
    }

    pub fn missing_token() -> Self {
        Self::new(ErrorKind::MissingToken, "Missing access token")
    }

    /// An access token that is not (or no longer) valid. `soft_logout` tells the client it
    /// may log in again keeping its device and keys (the token merely expired).
    pub fn unknown_token(soft_logout: bool, message: impl Into<String>) -> Self {
        let mut data = UnknownTokenErrorData::new();
        data.soft_logout = soft_logout;
        Self::new(ErrorKind::UnknownToken(data), message)
    }

    /// A write to a key backup version that is not the current one; the body names the
    /// current version so the client can switch to it.
    pub fn wrong_room_keys_version(current_version: impl Into<String>) -> Self {
        let data = WrongRoomKeysVersionErrorData::new(current_version.into());
        Self::new(ErrorKind::WrongRoomKeysVersion(data), "Wrong backup version")
    }

    /// A body or piece of content beyond a configured size (413).
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// A per-user limit reached (429); without a retry time, since it lifts when the user's
    /// earlier requests complete or expire rather than after a fixed delay.
    pub fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::LimitExceeded(LimitExceededErrorData::new()), message)
    }

    /// A per-user limit reached (429) that lifts at a known time: the body's
    /// `retry_after_ms` and the `Retry-After` header say when.
    pub fn limit_exceeded_for(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(ErrorKind::LimitExceeded(data), message)
    }

    /// A 400 with an error code ruma has no variant for (an MSC's unstable code) and the
    /// extra fields it defines.
    pub fn unstable_code(
        errcode: &str,
        message: impl Into<String>,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let mut body = fields;
        body.insert("errcode".to_owned(), errcode.into());
        // ruma builds its catch-all kind only by parsing; a code it knows parses to its kind.
        let kind = serde_json::from_value(serde_json::Value::Object(body)).unwrap_or(ErrorKind::Unknown);
        Self::new(kind, message)
    }

    /// An upload to a media ID that already has content (409).
    pub fn cannot_overwrite_media() -> Self {
        Self::new(ErrorKind::CannotOverwriteMedia, "Media already uploaded")
    }

    /// A download of a media ID whose content did not arrive in time (504).
    pub fn not_yet_uploaded() -> Self {
        Self::new(ErrorKind::NotYetUploaded, "Media has not been uploaded yet")
    }

    /// A failure the client should see as `M_UNKNOWN` with 400, such as content the server
    /// cannot thumbnail (the status the spec gives that case).
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unknown, message)
    }

    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unrecognized, message)
    }

    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal(context.into())
    }
}
