//! The `/_matrix/media/*` endpoints (`ruma::api::client::media`): uploads, in one request or
//! to an ID reserved first, and the legacy unauthenticated download and thumbnail endpoints,
//! which since Matrix 1.11 do not serve media uploaded during the freeze
//! (`media_legacy_freeze`). Upload bodies stream to disk through `RumaStream`.
// The legacy endpoints are deprecated in ruma, and served here on purpose.
#![allow(deprecated)]

use axum::{Json, extract::State, http::HeaderMap, response::Response};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::media::{
        create_content, create_content_async, create_mxc_uri, get_content, get_content_as_filename,
        get_content_thumbnail, get_media_config, get_media_preview,
    },
};

use super::authenticated_media::{serve_download, serve_thumbnail, thumbnail_request};
use crate::{
    Result,
    api::{
        AppState,
        content::receive_upload,
        ruma::{Ruma, RumaResponse, RumaStream},
    },
    service::{media::Access, rate_limits::Limiter},
};

/// The legacy requests the router registers, named here, where their deprecation is expected.
pub type GetContentRequest = get_content::v3::Request;
pub type GetContentAsFilenameRequest = get_content_as_filename::v3::Request;
pub type GetContentThumbnailRequest = get_content_thumbnail::v3::Request;

/// `POST /_matrix/media/v3/upload`
pub async fn create_content(
    State(services): State<AppState>,
    req: RumaStream<create_content::v3::Request>,
) -> Result<RumaResponse<create_content::v3::Response>> {
    let staged = receive_upload(&services, req.body, req.declared_length).await?;
    let (content_uri, _) = services
        .media
        .create(&req.identity.user_id, req.head.content_type, req.head.filename, None, staged)
        .await?;
    Ok(RumaResponse(create_content::v3::Response::new(content_uri)))
}

/// `POST /_matrix/media/v1/create`
pub async fn create_mxc_uri(
    services: AppState,
    req: Ruma<create_mxc_uri::v1::Request>,
) -> Result<create_mxc_uri::v1::Response> {
    services.rate_limits.check_user(Limiter::MediaCreate, &req.identity.user_id)?;
    let (content_uri, expires_ms) = services.media.create_pending(&req.identity.user_id)?;
    let mut response = create_mxc_uri::v1::Response::new(content_uri);
    response.unused_expires_at = Some(MilliSecondsSinceUnixEpoch(UInt::new_saturating(expires_ms)));
    Ok(response)
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`. Answers `{}` directly: ruma's
/// response type for it has no constructor.
pub async fn create_content_async(
    State(services): State<AppState>,
    req: RumaStream<create_content_async::v3::Request>,
) -> Result<Json<serde_json::Value>> {
    let head = req.head;
    // Refused before a byte of the body is read.
    let reservation =
        services.media.reserve_upload(&req.identity.user_id, &head.server_name, &head.media_id)?;
    let staged = receive_upload(&services, req.body, req.declared_length).await?;
    services.media.complete_upload(reservation, head.content_type, head.filename, staged).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /_matrix/media/v3/config`
pub async fn get_media_config(
    services: AppState,
    _req: Ruma<get_media_config::v3::Request>,
) -> Result<get_media_config::v3::Response> {
    Ok(get_media_config::v3::Response::new(UInt::new_saturating(services.media.max_upload_size())))
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}`
pub async fn get_content(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content::v3::Request>,
) -> Result<Response> {
    let r = req.body;
    let content = services
        .remote_media
        .content(&r.server_name, &r.media_id, r.timeout_ms, Access::Legacy, r.allow_remote)
        .await?;
    serve_download(content, None, &headers).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`
pub async fn get_content_as_filename(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content_as_filename::v3::Request>,
) -> Result<Response> {
    let r = req.body;
    let content = services
        .remote_media
        .content(&r.server_name, &r.media_id, r.timeout_ms, Access::Legacy, r.allow_remote)
        .await?;
    serve_download(content, Some(&r.filename), &headers).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`
pub async fn get_content_thumbnail(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content_thumbnail::v3::Request>,
) -> Result<Response> {
    let r = req.body;
    let request = thumbnail_request(r.width, r.height, r.method.as_ref(), r.animated)?;
    let content = services
        .remote_media
        .thumbnail(&r.server_name, &r.media_id, request, r.timeout_ms, Access::Legacy, r.allow_remote)
        .await?;
    serve_thumbnail(content, &headers).await
}

/// `GET /_matrix/media/v3/preview_url`
pub async fn get_media_preview(
    services: AppState,
    req: Ruma<get_media_preview::v3::Request>,
) -> Result<get_media_preview::v3::Response> {
    let og = services.url_previews.preview(&req.identity.user_id, &req.body.url).await?;
    Ok(get_media_preview::v3::Response::from_raw_value(og))
}
