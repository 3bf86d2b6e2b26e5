//! Discovery: `/versions`, `/.well-known/matrix/*` and `/capabilities`.

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use ruma::api::client::discovery::{
    discover_homeserver::{self, HomeserverInfo},
    get_capabilities::{
        self,
        v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
    },
    get_supported_versions,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    matrix::room_version,
};

/// Spec versions advertised. A version is listed once every endpoint it adds or changes in
/// the areas this server implements exists here: v1.1 (the `v3` paths), v1.2 (registration
/// token validity), v1.3 (refresh tokens). Later versions are added as the features they
/// require land (see docs/features.md).
pub const SUPPORTED_VERSIONS: &[&str] = &["r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3"];

/// Features from later spec versions this server has, advertised the way clients look for
/// them before the whole version is listed: authenticated media (MSC3916, Matrix 1.11), which
/// matrix-rust-sdk (and Element Web) use only when they see it here — without it they fall
/// back to the legacy media endpoints, which do not serve media uploaded during the freeze.
pub const UNSTABLE_FEATURES: &[&str] = &["org.matrix.msc3916.stable"];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions(
    _: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let versions = SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect();
    let mut response = get_supported_versions::Response::new(versions);
    response.unstable_features = UNSTABLE_FEATURES.iter().map(|f| ((*f).to_owned(), true)).collect();
    Ok(response)
}

/// `GET /.well-known/matrix/client`
pub async fn discover_homeserver(
    services: AppState,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    let base_url = services
        .config
        .well_known
        .client
        .clone()
        .ok_or_else(|| Error::not_found(".well-known not available"))?;
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(base_url)))
}

/// `GET /.well-known/matrix/server`. Served by hand: it belongs to the federation API, whose
/// ruma types are not compiled in while federation is not implemented.
pub async fn well_known_server(State(services): State<AppState>) -> Response {
    match &services.config.well_known.server {
        Some(server) => Json(serde_json::json!({ "m.server": server })).into_response(),
        None => Error::not_found(".well-known not available").into_response(),
    }
}

/// `GET /_matrix/client/v3/capabilities`
// `m.set_displayname`/`m.set_avatar_url` are deprecated since v1.16 in favour of
// `m.profile_fields`; the versions advertised here predate that, so they are the right ones.
#[allow(deprecated)]
pub async fn get_capabilities(
    services: AppState,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    let mut capabilities = Capabilities::new();
    capabilities.change_password.enabled = true;
    capabilities.set_displayname.enabled = true;
    capabilities.set_avatar_url.enabled = true;
    // Third-party identifiers (email, phone) are not supported.
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = false;
    let available =
        room_version::SUPPORTED.iter().map(|v| (v.clone(), RoomVersionStability::Stable)).collect();
    capabilities.room_versions =
        RoomVersionsCapability::new(services.config.default_room_version.clone(), available);
    Ok(get_capabilities::v3::Response::new(capabilities))
}
