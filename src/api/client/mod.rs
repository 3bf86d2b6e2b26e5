//! Client-server API handlers, one file per `ruma::api::client` module, one thin handler per
//! endpoint, named after it.

pub mod account;
pub mod admin;
pub mod alias;
pub mod appservice;
pub mod authenticated_media;
pub mod backup;
pub mod config;
pub mod context;
pub mod dehydrated_device;
pub mod delayed_events;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod keys;
pub mod knock;
pub mod legacy;
pub mod media;
pub mod membership;
pub mod message;
pub mod presence;
pub mod profile;
pub mod push;
pub mod read_marker;
pub mod receipt;
pub mod redact;
pub mod relations;
pub mod reporting;
pub mod room;
pub mod rtc;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod sync;
pub mod tag;
pub mod thirdparty;
pub mod threads;
pub mod to_device;
pub mod typing;
pub mod user_directory;
pub mod voip;

use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Error, Result,
    service::{
        Services,
        context::Caller,
        rooms::{
            events::StoredEvent,
            render::{Rendering, Viewer},
        },
    },
};

/// An event in the client format as the requesting device sees it (age, its own
/// transaction ID, bundled relations), as raw JSON for a ruma response.
fn event_json(services: &Services, identity: &Caller, event: &StoredEvent) -> Result<Box<RawJsonValue>> {
    let viewer = Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_deref() };
    services.renderer.raw(viewer, event, Rendering::CLIENT)
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

/// A token of a room's history as `/messages` takes it: a stream position, or below the
/// stream's start a backfilled event's (negative) position, `s<position>` or a bare number.
fn parse_position_token(token: &str) -> Result<i64> {
    token
        .strip_prefix('s')
        .unwrap_or(token)
        .parse()
        .map_err(|_| Error::invalid_param(format!("Invalid stream token {token:?}")))
}

/// Endpoints declared with optional auth (so a password reset by email could work without a
/// token) still need a user here, since that reset path is not offered.
fn required(identity: Option<Caller>) -> Result<Caller> {
    identity.ok_or_else(Error::missing_token)
}
