//! URL previews (`/preview_url`): fetch a page a user posted, read its OpenGraph data, store
//! its image as media, and cache the answer. Owns the `url_previews` table.
//!
//! Off unless configured: a preview makes this server fetch any URL a user names, so every
//! fetch goes through the SSRF guard (`service::outbound`), with the preview's own lists.
//! Redirects are followed here, one hop at a time, each hop checked again. Bodies are read up to a size limit, the whole fetch under a time limit,
//! and nothing is decompressed.

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url, header};
use ruma::UserId;
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

use super::{Media, opengraph};
use crate::{
    Error, Result,
    config::Config,
    service::{
        clock::Clock,
        outbound::{
            self, UrlRefusal, blocked_cause,
            ip_guard::{Policy, Refusal},
        },
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{URL_PREVIEWS, UrlPreviewRecord},
    },
};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// How long a preview is served from the cache.
const CACHE_TTL_MS: u64 = 3600 * 1000;
/// Longest URL previewed.
const MAX_URL_LEN: usize = 2048;
const USER_AGENT: &str = concat!("conduit/", env!("CARGO_PKG_VERSION"), " (Matrix URL preview)");

fn refused(refusal: &Refusal) -> Error {
    Error::forbidden(format!("URL blocked: {refusal}"))
}

pub struct UrlPreviews {
    enabled: bool,
    policy: Arc<Policy>,
    client: reqwest::Client,
    max_size: u64,
    timeout: Duration,
    cache: Table<String, UrlPreviewRecord>,
    store: Arc<dyn KvStore>,
    media: Arc<Media>,
    clock: Arc<dyn Clock>,
}

/// A fetched response that is not a redirect.
struct Fetched {
    response: reqwest::Response,
    /// The URL after redirects, which relative links resolve against.
    url: Url,
}

impl UrlPreviews {
    pub fn new(
        store: &Arc<dyn KvStore>,
        media: Arc<Media>,
        clock: Arc<dyn Clock>,
        config: &Config,
    ) -> Result<Self> {
        let policy = Arc::new(Policy {
            deny_ranges: config.url_preview_ip_range_blacklist.clone(),
            allow_ranges: config.url_preview_ip_range_whitelist.clone(),
            deny_hosts: config.url_preview_domain_blacklist.clone(),
            allow_hosts: config.url_preview_domain_whitelist.clone(),
            trusted_hosts: Vec::new(),
        });
        let timeout = Duration::from_secs(config.url_preview_timeout_secs);
        let client = outbound::guarded_client(&policy, timeout, USER_AGENT)
            .map_err(|e| Error::internal(format!("building the preview HTTP client: {e}")))?;
        Ok(Self {
            enabled: config.url_preview_enabled,
            policy,
            client,
            max_size: config.url_preview_max_spider_size,
            timeout,
            cache: URL_PREVIEWS.open(store),
            store: Arc::clone(store),
            media,
            clock,
        })
    }

    /// The OpenGraph object for `url`, from the cache or fetched now.
    pub async fn preview(&self, requester: &UserId, url: &str) -> Result<Box<RawJsonValue>> {
        if !self.enabled {
            // As Synapse: with previews off, the endpoint does not exist.
            return Err(Error::unrecognized("URL previews are disabled on this server"));
        }
        if url.len() > MAX_URL_LEN {
            return Err(Error::invalid_param("URL is too long"));
        }
        let mut parsed = Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param("Only http and https URLs are previewed"));
        }
        // The fragment never reaches the server; one cache entry serves every fragment.
        parsed.set_fragment(None);
        let key = parsed.to_string();
        let now = self.clock.now_ms();
        if let Some(cached) = self.cache.get(&key)?
            && now.saturating_sub(cached.fetched_ms) < CACHE_TTL_MS
        {
            return Ok(cached.og);
        }
        let og = tokio::time::timeout(self.timeout, self.build(requester, parsed))
            .await
            .map_err(|_| Error::Upstream("Timed out fetching the URL".to_owned()))??;
        let og = serde_json::value::to_raw_value(&og)
            .map_err(|e| Error::internal(format!("preview JSON: {e}")))?;
        self.cache.insert(&key, &UrlPreviewRecord { fetched_ms: now, og: og.clone() })?;
        Ok(og)
    }

    /// Fetch and read the page: HTML gives its OpenGraph data (with the image fetched), an
    /// image is its own preview, anything else previews as nothing.
    async fn build(&self, requester: &UserId, url: Url) -> Result<Map<String, Value>> {
        let fetched = self.fetch(url).await?;
        let content_type = content_type_of(&fetched.response);
        if content_type.starts_with("image/") {
            let mut og = Map::new();
            self.add_image(requester, fetched, &mut og).await?;
            return Ok(og);
        }
        if !matches!(content_type.as_str(), "text/html" | "application/xhtml+xml") {
            return Ok(Map::new());
        }
        let page_url = fetched.url.clone();
        let body = self.read_limited(fetched.response).await?;
        let tags = opengraph::scan(&body).into_og();
        let image_url =
            ["og:image", "og:image:url", "og:image:secure_url"].iter().find_map(|k| tags.get(*k)).cloned();
        let mut og: Map<String, Value> = tags
            .into_iter()
            // The image's own facts come from the image, not the page's claims.
            .filter(|(k, _)| !k.starts_with("og:image"))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        if let Some(image_url) = image_url.and_then(|u| page_url.join(&u).ok()) {
            // A page whose image cannot be fetched still previews, without the image.
            let image = match self.fetch(image_url).await {
                Ok(fetched) if content_type_of(&fetched.response).starts_with("image/") => {
                    self.add_image(requester, fetched, &mut og).await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = image {
                tracing::debug!(error = %e, "preview image not fetched");
            }
        }
        Ok(og)
    }

    /// GET `url`, following redirects through the guard.
    async fn fetch(&self, mut url: Url) -> Result<Fetched> {
        for _ in 0..=MAX_REDIRECTS {
            self.check_url(&url)?;
            let response = self
                .client
                .get(url.clone())
                .header(header::ACCEPT, "text/html, application/xhtml+xml, image/*;q=0.9, */*;q=0.1")
                .send()
                .await
                .map_err(|e| match blocked_cause(&e) {
                    Some(refusal) => refused(refusal),
                    None => Error::Upstream(format!("Could not fetch the URL: {}", describe(&e))),
                })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| Error::Upstream(format!("Redirect ({status}) without a location")))?;
                url = url
                    .join(location)
                    .map_err(|_| Error::Upstream("Redirect to an invalid URL".to_owned()))?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(Error::Upstream(format!("The URL answered {status}")));
            }
            return Ok(Fetched { response, url });
        }
        Err(Error::Upstream("Too many redirects".to_owned()))
    }

    /// The checks a URL passes before any connection: scheme, host lists, and the address
    /// itself when it is written as one.
    fn check_url(&self, url: &Url) -> Result<()> {
        outbound::check_url(&self.policy, url).map_err(|refusal| match refusal {
            UrlRefusal::Scheme => Error::forbidden("URL blocked: only http and https are fetched"),
            UrlRefusal::NoHost => Error::invalid_param("URL has no host"),
            UrlRefusal::Guard(refusal) => refused(&refusal),
        })
    }

    /// A body, up to the size limit: what lies beyond it is not read.
    async fn read_limited(&self, mut response: reqwest::Response) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| Error::Upstream(format!("Reading the page failed: {e}")))?
        {
            let room = (self.max_size as usize).saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() as u64 >= self.max_size {
                break;
            }
        }
        Ok(body)
    }

    /// Store a fetched image as media and describe it in `og` the way the spec asks:
    /// `og:image` as its `mxc://` URI, its size in `matrix:image:size`, and its real type and
    /// dimensions. Images over the size limit are refused.
    async fn add_image(
        &self,
        requester: &UserId,
        fetched: Fetched,
        og: &mut Map<String, Value>,
    ) -> Result<()> {
        let Fetched { mut response, url } = fetched;
        if response.content_length().is_some_and(|len| len > self.max_size) {
            return Err(Error::too_large("The image is larger than previews fetch"));
        }
        let content_type = content_type_of(&response);
        let mut sink = self.media.sink(self.max_size).await?;
        while let Some(chunk) =
            response.chunk().await.map_err(|e| Error::Upstream(format!("Reading the image failed: {e}")))?
        {
            self.media.write(&mut sink, &chunk).await?;
        }
        let staged = self.media.stage(sink).await?;
        let size = staged.size;
        let (mxc, media_id) = self
            .media
            .create(requester, Some(content_type.clone()), None, Some(url.to_string()), staged)
            .await?;
        og.insert("og:image".to_owned(), Value::String(mxc.to_string()));
        og.insert("matrix:image:size".to_owned(), Value::from(size));
        match self.media.image_info(&media_id).await? {
            Some(info) => {
                og.insert("og:image:type".to_owned(), Value::String(info.format.content_type().to_owned()));
                og.insert("og:image:width".to_owned(), Value::from(info.width));
                og.insert("og:image:height".to_owned(), Value::from(info.height));
            }
            None => {
                og.insert("og:image:type".to_owned(), Value::String(content_type));
            }
        }
        Ok(())
    }

    /// Drop cached previews older than the cache lifetime; returns how many.
    pub fn sweep(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut batch = WriteBatch::new();
        let mut swept = 0;
        for row in self.cache.scan(KeyRange::all(), Direction::Forward)? {
            let (url, record) = row?;
            if now.saturating_sub(record.fetched_ms) >= CACHE_TTL_MS {
                self.cache.delete(&mut batch, &url);
                swept += 1;
            }
        }
        if swept > 0 {
            self.store.write(batch)?;
        }
        Ok(swept)
    }
}

fn content_type_of(response: &reqwest::Response) -> String {
    let value = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    crate::matrix::media::essence(value)
}

/// A client error without the URL (which the client sees anyway) and with its cause.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}
