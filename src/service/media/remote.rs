//! `RemoteMedia`: the content repository across servers. A download or thumbnail of this
//! server's media goes straight to `Media`; one of another server's media is served from
//! the copy kept here (`Media::store_remote`), fetched on first request with
//! `GET /_matrix/federation/v1/media/download/{mediaId}` from its server (signed, through
//! the address guard). That answer is `multipart/mixed`: the metadata, then either the
//! content or a `Location` to fetch it from. The content streams into the media store
//! within `max_upload_size`, never whole in memory. One fetch at a time per item: requests
//! racing for it wait for the first and read its copy.
//!
//! With federation off, another server's media is `M_NOT_FOUND` saying so, and nothing is
//! fetched. Thumbnails of remote media are made here from the fetched original.

use std::{sync::Arc, time::Duration};

use http::header;
use ruma::{OwnedServerName, ServerName, http_headers::ContentDisposition};

use super::{Access, Content, Media, ThumbnailRequest, not_found};
use crate::{
    Error, Result,
    matrix::media::is_valid_media_id,
    service::federation::{FederationClient, client::refusal_error},
    storage::locks::KeyedLocks,
};

/// The metadata part of an answer is small JSON; more than this is refused.
const MAX_METADATA_BYTES: usize = 64 * 1024;

pub struct RemoteMedia {
    media: Arc<Media>,
    client: Arc<FederationClient>,
    server_name: OwnedServerName,
    fetching: KeyedLocks<(OwnedServerName, String)>,
}

impl RemoteMedia {
    pub fn new(media: Arc<Media>, client: Arc<FederationClient>, server_name: OwnedServerName) -> Self {
        Self { media, client, server_name, fetching: KeyedLocks::new() }
    }

    /// A media item's content: this server's, or another server's fetched first when not
    /// held (unless `allow_remote` is false: the legacy endpoints' `allow_remote=false`).
    pub async fn content(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: Access,
        allow_remote: bool,
    ) -> Result<Content> {
        self.ensure(server_name, media_id, allow_remote).await?;
        self.media.content(server_name, media_id, timeout, access).await
    }

    /// A thumbnail of a media item, another server's fetched first as for `content`.
    pub async fn thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
        timeout: Duration,
        access: Access,
        allow_remote: bool,
    ) -> Result<Content> {
        self.ensure(server_name, media_id, allow_remote).await?;
        self.media.thumbnail(server_name, media_id, request, timeout, access).await
    }

    /// Have another server's media item here, fetching it if need be.
    async fn ensure(&self, server_name: &ServerName, media_id: &str, allow_remote: bool) -> Result<()> {
        if server_name == self.server_name {
            return Ok(());
        }
        if !self.client.enabled() {
            return Err(Error::not_found("Remote media is not available: this server does not federate"));
        }
        if !is_valid_media_id(media_id) {
            return Err(not_found());
        }
        if self.media.remote_record(server_name, media_id)?.is_some() {
            return Ok(());
        }
        if !allow_remote {
            return Err(not_found());
        }
        let _fetching = self.fetching.lock(&(server_name.to_owned(), media_id.to_owned())).await;
        if self.media.remote_record(server_name, media_id)?.is_some() {
            return Ok(());
        }
        self.fetch(server_name, media_id).await
    }

    /// Fetch another server's media item into the store.
    async fn fetch(&self, server_name: &ServerName, media_id: &str) -> Result<()> {
        let path = format!("/_matrix/federation/v1/media/download/{media_id}");
        let response = match self.client.get_streamed(server_name, &path).await? {
            Ok(response) => response,
            Err(refusal) => return Err(refusal_error(server_name, &refusal)),
        };
        let garbled = |what: &str| Error::Upstream(format!("{server_name} sent a media answer {what}"));
        let boundary = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(mixed_boundary)
            .ok_or_else(|| garbled("that is not multipart/mixed"))?;
        let mut parts = multer::Multipart::new(response.bytes_stream(), boundary);
        let mut metadata = parts
            .next_field()
            .await
            .map_err(|e| garbled(&format!("that is not multipart: {e}")))?
            .ok_or_else(|| garbled("with no part"))?;
        let mut read = 0;
        while let Some(chunk) = metadata.chunk().await.map_err(|e| garbled(&format!("cut short: {e}")))? {
            read += chunk.len();
            if read > MAX_METADATA_BYTES {
                return Err(garbled("with metadata too large"));
            }
        }
        drop(metadata);
        let mut file = parts
            .next_field()
            .await
            .map_err(|e| garbled(&format!("cut short: {e}")))?
            .ok_or_else(|| garbled("without content"))?;
        let mut sink = self.media.sink(self.media.max_upload_size()).await?;
        let location = file.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, filename) = match location {
            Some(url) => {
                drop(file);
                drop(parts);
                let mut response = self.client.get_redirected(server_name, &url).await?;
                let described = described(response.headers());
                while let Some(chunk) =
                    response.chunk().await.map_err(|e| garbled(&format!("cut short at {url}: {e}")))?
                {
                    self.media.write(&mut sink, &chunk).await?;
                }
                described
            }
            None => {
                let described = described(file.headers());
                while let Some(chunk) = file.chunk().await.map_err(|e| garbled(&format!("cut short: {e}")))? {
                    self.media.write(&mut sink, &chunk).await?;
                }
                described
            }
        };
        let staged = self.media.stage(sink).await?;
        self.media.store_remote(server_name, media_id, staged, content_type, filename).await
    }
}

/// The boundary of a `multipart/mixed` content type (multer's own parser wants
/// `multipart/form-data`).
fn mixed_boundary(content_type: &str) -> Option<String> {
    let mut fields = content_type.split(';');
    if !fields.next()?.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    fields
        .find_map(|field| {
            let (name, value) = field.split_once('=')?;
            name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
        })
        .filter(|boundary| !boundary.is_empty())
}

/// The content type and file name a part's (or a response's) headers give.
fn described(headers: &http::HeaderMap) -> (Option<String>, Option<String>) {
    let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    let content_type = text(header::CONTENT_TYPE).map(str::to_owned);
    let filename = text(header::CONTENT_DISPOSITION)
        .and_then(|v| v.parse::<ContentDisposition>().ok())
        .and_then(|d| d.filename);
    (content_type, filename)
}
