//! Federation media (`ruma::api::federation::authenticated_media`): other servers download
//! this server's media and thumbnails, answered as `multipart/mixed` (metadata, then the
//! content streamed from disk) by `api::content`.

use axum::{extract::State, response::Response};
use ruma::{
    api::federation::authenticated_media::{get_content, get_content_thumbnail},
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    Result,
    api::{AppState, client::authenticated_media::thumbnail_request, content, ruma::Ruma},
    matrix::media::download_disposition,
    service::media::Access,
};

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn get_content(
    State(services): State<AppState>,
    req: Ruma<get_content::v1::Request>,
) -> Result<Response> {
    let r = req.body;
    let server = &services.config.server_name;
    let content = services.media.content(server, &r.media_id, r.timeout_ms, Access::Authenticated).await?;
    let disposition = download_disposition(&content.content_type, content.filename.as_deref());
    Ok(content::serve_multipart(content, disposition))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn get_content_thumbnail(
    State(services): State<AppState>,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let r = req.body;
    let request = thumbnail_request(r.width, r.height, r.method.as_ref(), r.animated)?;
    let server = &services.config.server_name;
    let content =
        services.media.thumbnail(server, &r.media_id, request, r.timeout_ms, Access::Authenticated).await?;
    let disposition = ContentDisposition::new(ContentDispositionType::Inline);
    Ok(content::serve_multipart(content, disposition))
}
