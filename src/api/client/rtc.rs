//! MatrixRTC (`ruma::api::client::rtc`, MSC4143): the call transports this server offers.

use axum::{Json, extract::State, response::IntoResponse};
use ruma::api::client::rtc::{RtcTransport, transports};
use serde_json::{Map, Value as JsonValue};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    config::Config,
};

/// The stable path the spec-to-be gives the endpoint; ruma knows only MSC4143's unstable one.
/// matrix-rust-sdk asks here first.
pub const STABLE_TRANSPORTS_PATH: &str = "/_matrix/client/v1/rtc/transports";

/// The configured transports as clients see them: `type` plus every configured field.
pub fn configured_transports(config: &Config) -> Result<Vec<RtcTransport>> {
    config
        .matrix_rtc
        .transports
        .iter()
        .map(|t| {
            RtcTransport::new(&t.kind, t.fields.clone())
                .map_err(|e| Error::internal(format!("RTC transport `{}`: {e}", t.kind)))
        })
        .collect()
}

/// `GET /_matrix/client/v1/rtc/transports` (and
/// `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports`). With none configured the
/// answer is `{}`, as Synapse gives: ruma's response type always writes the list, so the body
/// is written here.
pub async fn get_rtc_transports(
    State(services): State<AppState>,
    _: Ruma<transports::v1::Request>,
) -> Result<impl IntoResponse> {
    // Written from the configuration itself rather than through ruma's `RtcTransport`, which
    // keeps only the fields it knows for the types it knows once its LiveKit feature is on.
    let transports = &services.config.matrix_rtc.transports;
    let mut body = Map::new();
    if !transports.is_empty() {
        let list = serde_json::to_value(transports)
            .map_err(|e| Error::internal(format!("serialising RTC transports: {e}")))?;
        body.insert("rtc_transports".to_owned(), list);
    }
    Ok(Json(JsonValue::Object(body)))
}
