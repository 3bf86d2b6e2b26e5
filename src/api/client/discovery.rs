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
/// the areas this server implements exists here (optional modules a server may leave out,
/// such as third-party identifiers, SSO, OAuth 2.0 and `login/get_token`, answer as the spec
/// says a server without them does):
/// - v1.1 the `v3` paths; v1.2 registration token validity; v1.3 refresh tokens;
/// - v1.4 threads, edits, private and threaded receipts; v1.5 references;
/// - v1.6 `/timestamp_to_event`; v1.7 asynchronous uploads, reactions, mentions;
/// - v1.8 room version 11; v1.9 `suppress_edits`; v1.10 recursive `/relations`;
/// - v1.11 authenticated media, cross-signing keys first uploaded without UIA;
/// - v1.12 `via` on joins, marked-unread account data; v1.13 room reports and the
///   request-token error codes; v1.14 user reports; v1.15 `/room_summary`.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
    "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15",
];

/// Features advertised the way clients look for them: each works here. Element reads
/// `org.matrix.e2e_cross_signing` before it offers cross-signing, verification and key backup
/// at all; the others are features of the versions above that clients still probe by flag.
pub const UNSTABLE_FEATURES: &[&str] = &[
    // Cross-signing keys and signatures (`/keys/device_signing/upload`, `/keys/signatures/upload`).
    "org.matrix.e2e_cross_signing",
    // Authenticated media (Matrix 1.11): without it matrix-rust-sdk and Element fall back to
    // the legacy endpoints, which do not serve media uploaded during the freeze.
    "org.matrix.msc3916.stable",
    // Private read receipts.
    "org.matrix.msc2285.stable",
    // Threads and threaded receipts.
    "org.matrix.msc3440.stable",
    "org.matrix.msc3771",
    // `room_types` on `/publicRooms`.
    "org.matrix.msc3827.stable",
    // `recurse` on `/relations`.
    "org.matrix.msc3981",
    // Alias semantics: `/rooms/{roomId}/aliases` and checked canonical aliases.
    "org.matrix.msc2432",
    // Rooms shared with another user.
    "uk.half-shot.msc2666.query_mutual_rooms.stable",
    // Room summaries (MSC3266, stable in 1.15) under the unstable path too.
    "im.nheko.summary",
    // Simplified sliding sync (MSC4186): Element X refuses a server without it.
    "org.matrix.simplified_msc3575",
    // MatrixRTC transports (`/rtc/transports`; `{}` when none are configured, as Synapse).
    "org.matrix.msc4143",
    // `use_state_after` on `/sync` (also under its unstable name, which matrix-js-sdk sends).
    "org.matrix.msc4222",
];

/// `GET /_matrix/client/versions`. Delayed events (MSC4140) are advertised only when the
/// configuration turns them on: Element Call looks for the flag before it relies on them.
pub async fn get_supported_versions(
    services: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let versions = SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect();
    let mut response = get_supported_versions::Response::new(versions);
    response.unstable_features = UNSTABLE_FEATURES.iter().map(|f| ((*f).to_owned(), true)).collect();
    if services.delayed_events.enabled() {
        response.unstable_features.insert("org.matrix.msc4140".to_owned(), true);
    }
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
    let mut response = discover_homeserver::Response::new(HomeserverInfo::new(base_url));
    // matrix-rust-sdk falls back to these when `/rtc/transports` is not served; left out
    // when none are configured.
    response.rtc_foci = super::rtc::configured_transports(&services.config)?;
    Ok(response)
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
    req: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    let mut capabilities = Capabilities::new();
    // Not with passwords off, nor for accounts whose password the company directory keeps.
    capabilities.change_password.enabled =
        !services.config.sso_only && !services.accounts.password_managed_elsewhere(&req.identity.user_id)?;
    capabilities.set_displayname.enabled = true;
    capabilities.set_avatar_url.enabled = true;
    // Third-party identifiers (email, phone) are not supported.
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = services.config.login_via_existing_session.enabled;
    let available =
        room_version::SUPPORTED.iter().map(|v| (v.clone(), RoomVersionStability::Stable)).collect();
    capabilities.room_versions =
        RoomVersionsCapability::new(services.config.default_room_version.clone(), available);
    // Delayed events (MSC4140), always listed as Synapse lists them: a maximum delay of 0
    // says they are off.
    let limits = services.delayed_events.limits();
    let max_delay_ms = if services.delayed_events.enabled() { limits.max_delay_ms.unwrap_or(0) } else { 0 };
    capabilities
        .set(
            "org.matrix.msc4140.delayed_events",
            serde_json::json!({ "max_delay_ms": max_delay_ms, "max_scheduled": limits.max_per_user }),
        )
        .map_err(|e| Error::internal(format!("delayed events capability: {e}")))?;
    Ok(get_capabilities::v3::Response::new(capabilities))
}

/// `/capabilities` spells out `m.change_password` even when enabled (ruma leaves a default
/// capability out): Element and the spec's examples read it there.
pub fn fill_capabilities(json: &mut serde_json::Value) {
    if let Some(capabilities) = json.get_mut("capabilities").and_then(serde_json::Value::as_object_mut) {
        capabilities.entry("m.change_password").or_insert_with(|| serde_json::json!({ "enabled": true }));
    }
}
