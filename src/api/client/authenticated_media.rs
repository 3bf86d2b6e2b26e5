//! Authenticated media (`/_matrix/client/v1/media/*`, `ruma::api::client::authenticated_media`):
//! the content repository's download, thumbnail, preview and config endpoints, which need an
//! access token. Downloads and thumbnails answer with the stored bytes streamed from disk, so
//! they build their responses in `api::content` rather than through ruma's buffered types.

use axum::{extract::State, http::HeaderMap, response::Response};
use ruma::{
    UInt,
    api::client::authenticated_media::{
        get_content, get_content_as_filename, get_content_thumbnail, get_media_config, get_media_preview,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    media::Method,
};

use crate::{
    Error, Result,
    api::{AppState, content, ruma::Ruma},
    matrix::media::{ResizeMethod, download_disposition},
    service::media::{Access, Content, ThumbnailRequest},
};

/// `GET /_matrix/client/v1/media/config`
pub async fn get_media_config(
    services: AppState,
    _req: Ruma<get_media_config::v1::Request>,
) -> Result<get_media_config::v1::Response> {
    Ok(get_media_config::v1::Response::new(UInt::new_saturating(services.media.max_upload_size())))
}

/// Send downloaded content with its disposition, the file name in the path (if any) taking
/// the place of the uploaded one.
pub(super) async fn serve_download(
    content: Content,
    filename: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response> {
    let disposition = download_disposition(&content.content_type, filename.or(content.filename.as_deref()));
    content::serve(content, disposition, headers).await
}

/// Thumbnails are always `inline` (the spec requires it; they are images of a safe type).
pub(super) async fn serve_thumbnail(content: Content, headers: &HeaderMap) -> Result<Response> {
    let disposition =
        ContentDisposition::new(ContentDispositionType::Inline).with_filename(content.filename.clone());
    content::serve(content, disposition, headers).await
}

/// A thumbnail request's parameters in the service's terms. Scale is the default method, as
/// in Synapse.
pub(crate) fn thumbnail_request(
    width: UInt,
    height: UInt,
    method: Option<&Method>,
    animated: Option<bool>,
) -> Result<ThumbnailRequest> {
    let method = match method {
        None | Some(Method::Scale) => ResizeMethod::Scale,
        Some(Method::Crop) => ResizeMethod::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!("Unknown thumbnail method {:?}", other.as_str())));
        }
    };
    let dimension = |v: UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    Ok(ThumbnailRequest { width: dimension(width), height: dimension(height), method, animated })
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn get_content(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content::v1::Request>,
) -> Result<Response> {
    let r = req.body;
    let content = services
        .remote_media
        .content(&r.server_name, &r.media_id, r.timeout_ms, Access::Authenticated, true)
        .await?;
    serve_download(content, None, &headers).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn get_content_as_filename(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content_as_filename::v1::Request>,
) -> Result<Response> {
    let r = req.body;
    let content = services
        .remote_media
        .content(&r.server_name, &r.media_id, r.timeout_ms, Access::Authenticated, true)
        .await?;
    serve_download(content, Some(&r.filename), &headers).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn get_content_thumbnail(
    State(services): State<AppState>,
    headers: HeaderMap,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let r = req.body;
    let request = thumbnail_request(r.width, r.height, r.method.as_ref(), r.animated)?;
    let content = services
        .remote_media
        .thumbnail(&r.server_name, &r.media_id, request, r.timeout_ms, Access::Authenticated, true)
        .await?;
    serve_thumbnail(content, &headers).await
}

/// `GET /_matrix/client/v1/media/preview_url`
pub async fn get_media_preview(
    services: AppState,
    req: Ruma<get_media_preview::v1::Request>,
) -> Result<get_media_preview::v1::Response> {
    let og = services.url_previews.preview(&req.identity.user_id, &req.body.url).await?;
    Ok(get_media_preview::v1::Response::from_raw_value(og))
}
