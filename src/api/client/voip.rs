//! VoIP (`ruma::api::client::voip`): the TURN servers clients use for calls.

use axum::{Json, extract::State, response::IntoResponse};
use ruma::api::client::voip::get_turn_server_info;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/voip/turnServer`. With no TURN server configured the answer is an
/// empty object (as Synapse gives): clients then place calls with STUN or direct connections
/// only. ruma's response type has no empty form, so the body is written here.
pub async fn get_turn_server_info(
    State(services): State<AppState>,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<impl IntoResponse> {
    let body = match services.turn.credentials(&req.identity.user_id) {
        Some(turn) => serde_json::json!({
            "username": turn.username,
            "password": turn.password,
            "uris": turn.uris,
            "ttl": turn.ttl.as_secs(),
        }),
        None => serde_json::json!({}),
    };
    Ok(Json(body))
}
