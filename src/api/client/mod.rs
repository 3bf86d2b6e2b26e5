//! Client-server API handlers, one file per `ruma::api::client` module, one thin handler per
//! endpoint, named after it.

pub mod account;
pub mod alias;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod knock;
pub mod membership;
pub mod message;
pub mod profile;
pub mod redact;
pub mod reporting;
pub mod room;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod user_directory;

use serde_json::value::RawValue as RawJsonValue;

use crate::{Error, Result, service::devices::DeviceIdentity, service::rooms::events::StoredEvent};

/// An event in the client format, as raw JSON for a ruma response.
fn event_json(event: &StoredEvent) -> Result<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(&event.pdu.to_client_event(None))
        .map_err(|e| Error::internal(format!("serialising event: {e}")))
}

/// A request's JSON body as a value (ruma keeps event contents raw).
fn json_body(raw: &RawJsonValue) -> Result<serde_json::Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Invalid JSON body: {e}")))
}

/// A stream token as clients pass it back (`s<position>`, or a bare number).
fn parse_stream_token(token: &str) -> Result<u64> {
    token
        .strip_prefix('s')
        .unwrap_or(token)
        .parse()
        .map_err(|_| Error::invalid_param(format!("Invalid stream token {token:?}")))
}

/// Endpoints declared with optional auth (so a password reset by email could work without a
/// token) still need a user here, since that reset path is not offered.
fn required(identity: Option<DeviceIdentity>) -> Result<DeviceIdentity> {
    identity.ok_or_else(Error::missing_token)
}
