//! VoIP (`ruma::api::client::voip`): the TURN servers clients use for calls.

use axum::{Json, response::IntoResponse};
use ruma::api::client::voip::get_turn_server_info;

use crate::api::{AppState, ruma::Ruma};

/// `GET /_matrix/client/v3/voip/turnServer`. No TURN server is configured, and the answer for
/// that is an empty object (as Synapse gives): clients then place calls with STUN or direct
/// connections only. ruma's response type has no empty form, so the body is written here.
pub async fn get_turn_server_info(
    _: axum::extract::State<AppState>,
    _: Ruma<get_turn_server_info::v3::Request>,
) -> impl IntoResponse {
    Json(serde_json::json!({}))
}
