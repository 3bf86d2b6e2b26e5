//! Media bytes in an S3-compatible bucket (`media_backend = "s3"`): each content file is the
//! object `<prefix>content/<64 hex digits of its SHA-256>`. Requests are signed with AWS
//! Signature Version 4, written here over `ring`'s HMAC-SHA256 and `sha2`; the payload hash
//! signed for a `PUT` is the content hash itself, so the service checks the bytes it stores.
//!
//! The endpoint is the operator's (often a MinIO or Garage on loopback or the LAN), so this
//! client does not pass through the address guard that keeps user-named URLs off internal
//! addresses; it follows no redirects and uses no proxy.
//!
//! The media service calls the store from blocking threads, so, as the PostgreSQL backend,
//! the store owns a small runtime of its own that drives its connections: a blocking caller
//! hands it a request and waits; a download's body is passed back through a channel, so the
//! caller's runtime reads it as any stream.

use std::{
    fmt::Write as _,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use ring::hmac;
use sha2::{Digest as _, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWriteExt as _, ReadBuf},
    runtime::{Handle, Runtime, RuntimeFlavor},
    sync::mpsc,
};
use url::Url;

use crate::{config::MediaS3Config, storage::tables::ContentHash};

/// The SHA-256 of no bytes: the payload hash of requests without a body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// How long connecting to the service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request without a large body (HEAD, DELETE, the start of a GET) may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stall in a transfer may last before it is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks of a download in flight between the store's runtime and the reader.
const DOWNLOAD_QUEUE: usize = 4;

/// The bucket and how to reach it, checked.
#[derive(Clone)]
struct Target {
    endpoint: Url,
    bucket: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    path_style: bool,
    prefix: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A request ready to send: its URL and the headers that sign it.
struct Signed {
    url: Url,
    headers: Vec<(&'static str, String)>,
}

impl Target {
    fn from_config(config: &MediaS3Config) -> Result<Self, String> {
        let need = |value: &Option<String>, key: &str| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("media_backend = \"s3\" needs key `media_s3.{key}`"))
        };
        let endpoint = need(&config.endpoint, "endpoint")?;
        let endpoint =
            Url::parse(&endpoint).map_err(|e| format!("media_s3.endpoint `{endpoint}` is not a URL: {e}"))?;
        Ok(Self {
            endpoint,
            bucket: need(&config.bucket, "bucket")?,
            region: config.region.clone(),
            access_key_id: need(&config.access_key_id, "access_key_id")?,
            secret_access_key: need(&config.secret_access_key, "secret_access_key")?,
            path_style: config.path_style,
            prefix: config.prefix.clone(),
        })
    }

    /// The object key of content `hash`.
    fn key(&self, hash: &ContentHash) -> String {
        format!("{}content/{}", self.prefix, hash.to_hex())
    }

    /// The URL of the bucket (`key` None) or of an object, and the canonical URI that is signed
    /// (the same path, its segments encoded as Signature Version 4 wants).
    fn url(&self, key: Option<&str>) -> Result<(Url, String), String> {
        let mut url = self.endpoint.clone();
        let mut path = String::new();
        if self.path_style {
            path.push('/');
            path.push_str(&self.bucket);
        } else {
            let host = url.host_str().ok_or("media_s3.endpoint has no host")?;
            let host = format!("{}.{host}", self.bucket);
            url.set_host(Some(&host)).map_err(|e| format!("bucket host name `{host}`: {e}"))?;
        }
        match key {
            Some(key) => {
                for segment in key.split('/') {
                    path.push('/');
                    path.push_str(&uri_encode(segment));
                }
            }
            None if path.is_empty() => path.push('/'),
            None => {}
        }
        // The path is already encoded; the url crate keeps percent escapes as they are.
        url.set_path(&path);
        Ok((url, path))
    }

    /// Sign a request (no query string) with Signature Version 4 for `now`.
    fn sign(
        &self,
        method: &Method,
        key: Option<&str>,
        payload_sha256: &str,
        now: SystemTime,
    ) -> Result<Signed, String> {
        let (url, canonical_uri) = self.url(key)?;
        let mut host = url.host_str().ok_or("media_s3.endpoint has no host")?.to_owned();
        if let Some(port) = url.port() {
            let _ = write!(host, ":{port}");
        }
        let (date, amz_date) = amz_dates(now);
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request = format!(
            "{method}\n{canonical_uri}\n\nhost:{host}\nx-amz-content-sha256:{payload_sha256}\n\
             x-amz-date:{amz_date}\n\n{signed_headers}\n{payload_sha256}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let mut signing_key = format!("AWS4{}", self.secret_access_key).into_bytes();
        for part in [date.as_str(), self.region.as_str(), "s3", "aws4_request"] {
            signing_key = hmac_sha256(&signing_key, part.as_bytes());
        }
        let signature = hex(&hmac_sha256(&signing_key, string_to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        );
        Ok(Signed {
            url,
            headers: vec![
                ("x-amz-content-sha256", payload_sha256.to_owned()),
                ("x-amz-date", amz_date),
                ("authorization", authorization),
            ],
        })
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Percent-encode a path segment as Signature Version 4 does: everything but `A-Z a-z 0-9 -
/// . _ ~`, in upper-case hex.
fn uri_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of `now`, in UTC.
fn amz_dates(now: SystemTime) -> (String, String) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!("T{:02}{:02}{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60);
    (date.clone(), date + &time)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (eras of 400 years, each
/// with the same pattern of leap days; March-based years put the leap day last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An answer the store did not expect, as an I/O error carrying the service's words.
async fn unexpected(what: &str, response: reqwest::Response) -> io::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    // S3 errors are XML with a `<Code>` and a `<Message>`; both say more than the status.
    let code = between(&body, "<Code>", "</Code>");
    let message = between(&body, "<Message>", "</Message>");
    let detail = match (code, message) {
        (Some(code), Some(message)) => format!(": {code}: {message}"),
        (Some(code), None) => format!(": {code}"),
        _ => String::new(),
    };
    let kind = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => io::ErrorKind::PermissionDenied,
        StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("S3 {what} answered {status}{detail}"))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn transport(what: &str) -> impl FnOnce(reqwest::Error) -> io::Error + '_ {
    move |e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        io::Error::other(format!("S3 {what}: {text}"))
    }
}

/// The connection to the bucket.
pub struct S3Store {
    target: Arc<Target>,
    http: reqwest::Client,
    /// Drives every request; `None` only while dropping.
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async context may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl S3Store {
    /// Connect to the configured bucket and check that it answers to these credentials
    /// (`HEAD` on the bucket): a missing bucket, a refused key or an unreachable service stop
    /// the server from starting, with the service's reason.
    pub fn connect(config: &MediaS3Config) -> Result<Self, String> {
        let target = Arc::new(Target::from_config(config)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("conduit-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the S3 client's runtime: {e}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("conduit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the S3 HTTP client: {e}"))?;
        let store = Self { target, http, runtime: Some(runtime) };
        let (endpoint, bucket) = (store.target.endpoint.as_str(), store.target.bucket.as_str());
        store.check_bucket().map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (check media_s3.access_key_id, media_s3.secret_access_key and media_s3.region)"
                }
                io::ErrorKind::NotFound => {
                    " (create the bucket first, or check media_s3.bucket and path_style)"
                }
                _ => "",
            };
            format!("media_s3: bucket `{bucket}` at {endpoint} cannot be used: {e}{hint}")
        })?;
        Ok(store)
    }

    /// Run `future` on the store's runtime and wait for it, telling the caller's runtime
    /// first when the caller is one of its workers.
    fn wait<T: Send + 'static>(
        &self,
        future: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io::Error::other("the S3 client has stopped"))?;
        let task = runtime.spawn(future);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let outcome = task.await.unwrap_or_else(|e| Err(io::Error::other(format!("S3 request: {e}"))));
            let _ = tx.send(outcome);
        });
        let wait = move || rx.recv().unwrap_or_else(|_| Err(io::Error::other("the S3 client stopped")));
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// A signed request builder; `key` None is the bucket itself.
    fn request(
        http: &reqwest::Client,
        target: &Target,
        method: Method,
        key: Option<&str>,
        payload_sha256: &str,
    ) -> io::Result<reqwest::RequestBuilder> {
        let signed =
            target.sign(&method, key, payload_sha256, SystemTime::now()).map_err(io::Error::other)?;
        let mut request = http.request(method, signed.url);
        for (name, value) in signed.headers {
            request = request.header(name, value);
        }
        Ok(request)
    }

    fn check_bucket(&self) -> io::Result<()> {
        let (http, target) = (self.http.clone(), Arc::clone(&self.target));
        self.wait(async move {
            let response = Self::request(&http, &target, Method::HEAD, None, EMPTY_SHA256)?
                .timeout(SHORT_TIMEOUT)
                .send()
                .await
                .map_err(transport("HEAD bucket"))?;
            match response.status() {
                status if status.is_success() => Ok(()),
                // A HEAD answer has no body to explain itself.
                StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("S3 HEAD bucket answered {}: the credentials were refused", response.status()),
                )),
                StatusCode::NOT_FOUND => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "S3 HEAD bucket answered 404 Not Found: no such bucket",
                )),
                _ => Err(unexpected("HEAD bucket", response).await),
            }
        })
    }

    /// Whether the object of `hash` exists.
    pub fn exists(&self, hash: &ContentHash) -> io::Result<bool> {
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        self.wait(async move {
            let response = Self::request(&http, &target, Method::HEAD, Some(&key), EMPTY_SHA256)?
                .timeout(SHORT_TIMEOUT)
                .send()
                .await
                .map_err(transport("HEAD object"))?;
            match response.status() {
                status if status.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(unexpected("HEAD object", response).await),
            }
        })
    }

    /// Store the file at `path` (`size` bytes whose SHA-256 is `hash`) as the object of
    /// `hash`, in one `PUT` streamed from the file.
    pub fn put_file(&self, path: &Path, hash: &ContentHash, size: u64) -> io::Result<()> {
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        let (path, payload) = (path.to_owned(), hash.to_hex());
        self.wait(async move {
            let file = tokio::fs::File::open(&path).await?;
            let body =
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
            let response = Self::request(&http, &target, Method::PUT, Some(&key), &payload)?
                .header(reqwest::header::CONTENT_LENGTH, size)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .send()
                .await
                .map_err(transport("PUT object"))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(unexpected("PUT object", response).await)
            }
        })
    }

    /// Delete the object of `hash`; one already gone is not an error.
    pub fn delete(&self, hash: &ContentHash) -> io::Result<()> {
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        self.wait(async move {
            let response = Self::request(&http, &target, Method::DELETE, Some(&key), EMPTY_SHA256)?
                .timeout(SHORT_TIMEOUT)
                .send()
                .await
                .map_err(transport("DELETE object"))?;
            match response.status() {
                status if status.is_success() => Ok(()),
                StatusCode::NOT_FOUND => Ok(()),
                _ => Err(unexpected("DELETE object", response).await),
            }
        })
    }

    /// Copy the object of `hash` into `file`; `false` when there is no such object.
    pub fn download_to(&self, hash: &ContentHash, file: std::fs::File) -> io::Result<bool> {
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        self.wait(async move {
            let mut response = Self::request(&http, &target, Method::GET, Some(&key), EMPTY_SHA256)?
                .send()
                .await
                .map_err(transport("GET object"))?;
            match response.status() {
                status if status.is_success() => {}
                StatusCode::NOT_FOUND => return Ok(false),
                _ => return Err(unexpected("GET object", response).await),
            }
            let mut file = tokio::fs::File::from_std(file);
            while let Some(chunk) = response.chunk().await.map_err(transport("GET object"))? {
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            Ok(true)
        })
    }

    /// Up to the first `len` bytes of the object of `hash` (a ranged `GET`); `None` when
    /// there is no such object.
    pub fn read_head(&self, hash: &ContentHash, len: usize) -> io::Result<Option<Vec<u8>>> {
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        self.wait(async move {
            let mut response = Self::request(&http, &target, Method::GET, Some(&key), EMPTY_SHA256)?
                .header(reqwest::header::RANGE, format!("bytes=0-{}", len.saturating_sub(1)))
                .timeout(SHORT_TIMEOUT)
                .send()
                .await
                .map_err(transport("GET object range"))?;
            match response.status() {
                status if status.is_success() => {}
                StatusCode::NOT_FOUND => return Ok(None),
                // An empty object has no first byte to give.
                StatusCode::RANGE_NOT_SATISFIABLE => return Ok(Some(Vec::new())),
                _ => return Err(unexpected("GET object range", response).await),
            }
            // A service that ignores the range sends the whole object: read only the start.
            let mut head = Vec::with_capacity(len);
            while head.len() < len {
                let Some(chunk) = response.chunk().await.map_err(transport("GET object range"))? else {
                    break;
                };
                head.extend_from_slice(&chunk[..chunk.len().min(len - head.len())]);
            }
            Ok(Some(head))
        })
    }

    /// Start reading the object of `hash`: `None` when there is no such object, otherwise
    /// its bytes as they arrive.
    pub async fn open(&self, hash: &ContentHash) -> io::Result<Option<ObjectReader>> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io::Error::other("the S3 client has stopped"))?;
        let (http, target, key) = (self.http.clone(), Arc::clone(&self.target), self.target.key(hash));
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DOWNLOAD_QUEUE);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<io::Result<bool>>();
        runtime.spawn(async move {
            let sent = match Self::request(&http, &target, Method::GET, Some(&key), EMPTY_SHA256) {
                Ok(request) => request.send().await.map_err(transport("GET object")),
                Err(e) => Err(e),
            };
            let mut response = match sent {
                Ok(response) => response,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            match response.status() {
                status if status.is_success() => {}
                StatusCode::NOT_FOUND => {
                    let _ = started_tx.send(Ok(false));
                    return;
                }
                _ => {
                    let _ = started_tx.send(Err(unexpected("GET object", response).await));
                    return;
                }
            }
            if started_tx.send(Ok(true)).is_err() {
                return;
            }
            loop {
                let next = match response.chunk().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => return,
                    Err(e) => Err(transport("GET object")(e)),
                };
                let failed = next.is_err();
                // The reader went away (the client hung up): stop downloading.
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        match started_rx.await {
            Ok(Ok(true)) => Ok(Some(ObjectReader { rx, current: Bytes::new() })),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("the S3 client stopped")),
        }
    }
}

/// An object's bytes as the store's runtime receives them.
pub struct ObjectReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let piece = self.current.split_to(n);
                buf.put_slice(&piece);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The sender is dropped at the end of the body.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path_style: bool) -> Target {
        Target {
            endpoint: Url::parse("https://s3.amazonaws.com").unwrap(),
            bucket: "examplebucket".into(),
            region: "us-east-1".into(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            path_style,
            prefix: String::new(),
        }
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
        let (date, stamp) = amz_dates(UNIX_EPOCH + Duration::from_secs(1_369_353_600));
        assert_eq!((date.as_str(), stamp.as_str()), ("20130524", "20130524T000000Z"));
    }

    fn authorization(signed: &Signed) -> &str {
        &signed.headers.iter().find(|(name, _)| *name == "authorization").unwrap().1
    }

    #[test]
    fn requests_are_signed_as_botocore_signs_them() {
        // The expected signatures were computed with botocore's `S3SigV4Auth` (the signer of
        // the AWS SDK for Python) for the same key, time and requests, with AWS's documented
        // example credentials.
        let now = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let signed = target(false).sign(&Method::GET, Some("test.txt"), EMPTY_SHA256, now).unwrap();
        assert_eq!(signed.url.as_str(), "https://examplebucket.s3.amazonaws.com/test.txt");
        assert_eq!(
            authorization(&signed),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=df548e2ce037944d03f3e68682813b093763996d597cf890ca3d9037fd231eb4"
        );

        // A path-style PUT on a port, with a key that needs encoding, signed over its payload
        // hash (of the body `hello`).
        let mut t = target(true);
        t.endpoint = Url::parse("http://127.0.0.1:9000").unwrap();
        t.prefix = "a b/".into();
        let key = t.key(&ContentHash([0xab; 32]));
        let hello = hex(&Sha256::digest(b"hello"));
        let signed = t.sign(&Method::PUT, Some(&key), &hello, now).unwrap();
        assert!(
            authorization(&signed)
                .ends_with("Signature=423ac22787dcb7be3584e620c6821e52af6f10dca32c6554932a86ea88d52597")
        );
    }

    #[test]
    fn path_style_puts_the_bucket_in_the_path_and_encodes_keys() {
        let mut t = target(true);
        t.endpoint = Url::parse("http://127.0.0.1:9000").unwrap();
        t.prefix = "a b/".into();
        let hash = ContentHash([0xab; 32]);
        let key = t.key(&hash);
        let (url, canonical) = t.url(Some(&key)).unwrap();
        assert_eq!(canonical, format!("/examplebucket/a%20b/content/{}", hash.to_hex()));
        assert_eq!(url.as_str(), format!("http://127.0.0.1:9000{canonical}"));
        let (bucket_url, bucket_path) = t.url(None).unwrap();
        assert_eq!(
            (bucket_url.as_str(), bucket_path.as_str()),
            ("http://127.0.0.1:9000/examplebucket", "/examplebucket")
        );
        assert_eq!(t.url(None).map(|(_, p)| p).unwrap(), "/examplebucket");
        assert_eq!(target(false).url(None).unwrap().1, "/");
    }
}
