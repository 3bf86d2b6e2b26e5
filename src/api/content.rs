//! Media over HTTP, shared by the authenticated and legacy media endpoints: receiving an
//! upload's body as a stream, and sending stored content as a stream with the spec's
//! hardening headers, its `Content-Disposition` and byte ranges.

use std::io::SeekFrom;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt as _;
use ruma::http_headers::ContentDisposition;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use crate::{
    Error, Result,
    service::{
        Services,
        media::{Content, ContentBody, files::StagedFile},
    },
};

/// Bytes read from disk per piece of a download: few system calls per megabyte, little
/// memory per download.
const READ_CHUNK: usize = 256 * 1024;

/// The policy the spec recommends for served content: nothing in it may run or load.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// Stream an upload's body into the media store's temporary file, refusing it as soon as it
/// passes the configured limit (or up front, when its declared length does).
pub async fn receive_upload(
    services: &Services,
    mut body: Body,
    declared_length: Option<u64>,
) -> Result<StagedFile> {
    let limit = services.media.max_upload_size();
    if declared_length.is_some_and(|len| len > limit) {
        return Err(Error::too_large(format!("Uploads are limited to {limit} bytes")));
    }
    let mut sink = services.media.sink(limit).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::net::is_body_timeout(&e) {
                super::ruma::body_error(&e)
            } else {
                Error::unknown(format!("Upload interrupted: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            services.media.write(&mut sink, &data).await?;
        }
    }
    services.media.stage(sink).await
}

/// Which bytes a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No range, or one this server does not honour (several ranges): the whole content.
    Whole,
    /// `start..=end`, within the content.
    Part(u64, u64),
    /// A range that starts past the end (416).
    Unsatisfiable,
}

/// Parse a single `bytes=` range (RFC 9110 §14.1.2): `a-b`, `a-` or `-suffix`. Anything this
/// server does not serve as a range, including malformed headers, is served whole, as the RFC
/// allows.
fn parse_range(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ranged::Whole };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Whole };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // The last `n` bytes.
        (true, false) => match parse(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(n) if size > 0 => Ranged::Part(size.saturating_sub(n), size - 1),
            Some(_) => Ranged::Unsatisfiable,
            None => Ranged::Whole,
        },
        (false, _) => {
            let Some(start) = parse(first) else { return Ranged::Whole };
            let end = if last.is_empty() {
                size.saturating_sub(1)
            } else {
                match parse(last) {
                    Some(end) if end >= start => end.min(size.saturating_sub(1)),
                    _ => return Ranged::Whole,
                }
            };
            if start >= size { Ranged::Unsatisfiable } else { Ranged::Part(start, end) }
        }
        (true, true) => Ranged::Whole,
    }
}

fn header_value(value: &str, fallback: &'static str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static(fallback))
}

/// The headers every piece of served content carries.
fn hardening(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // An mxc URI's content never changes, but authenticated media must not sit in shared
    // caches.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400"));
}

/// Send content: the whole of it, or the byte range `request_headers` ask for.
pub async fn serve(
    content: Content,
    disposition: ContentDisposition,
    request_headers: &HeaderMap,
) -> Result<Response> {
    let size = content.size;
    let ranged = match request_headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) => parse_range(range, size),
        None => Ranged::Whole,
    };
    let mut headers = HeaderMap::new();
    hardening(&mut headers);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, start, len) = match ranged {
        Ranged::Whole => (StatusCode::OK, 0, size),
        Ranged::Part(start, end) => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}"), "bytes */0"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Ranged::Unsatisfiable => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{size}"), "bytes */0"));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
        }
    };
    headers.insert(header::CONTENT_TYPE, header_value(&content.content_type, "application/octet-stream"));
    headers.insert(header::CONTENT_DISPOSITION, header_value(&disposition.to_string(), "attachment"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = match content.body {
        ContentBody::File(mut file) => {
            if start > 0 {
                file.seek(SeekFrom::Start(start))
                    .await
                    .map_err(|e| Error::internal(format!("seeking media: {e}")))?;
            }
            Body::from_stream(ReaderStream::with_capacity(file.take(len), READ_CHUNK))
        }
        ContentBody::Reader(mut reader) => {
            // An object being downloaded cannot seek: the bytes before the range are read
            // and dropped.
            if start > 0 {
                tokio::io::copy(&mut (&mut reader).take(start), &mut tokio::io::sink())
                    .await
                    .map_err(|e| Error::internal(format!("reading media: {e}")))?;
            }
            Body::from_stream(ReaderStream::with_capacity(reader.take(len), READ_CHUNK))
        }
        ContentBody::Bytes(bytes) => {
            let (start, end) = (start as usize, (start + len) as usize);
            Body::from(bytes.slice(start.min(bytes.len())..end.min(bytes.len())))
        }
    };
    Ok((status, headers, body).into_response())
}

/// Send content to another server as the federation media endpoints answer it: a
/// `multipart/mixed` body whose first part is the metadata (`{}`: the spec defines no field
/// yet) and whose second is the content with its type and disposition, streamed.
pub fn serve_multipart(content: Content, disposition: ContentDisposition) -> Response {
    let boundary = crate::service::passwords::random_string(32);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Disposition: {disposition}\r\n\r\n",
        header_value(&content.content_type, "application/octet-stream")
            .to_str()
            .unwrap_or("application/octet-stream"),
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + content.size + tail.len() as u64;
    let body = match content.body {
        ContentBody::File(file) => {
            let reader = std::io::Cursor::new(head.into_bytes())
                .chain(file.take(content.size))
                .chain(std::io::Cursor::new(tail.into_bytes()));
            Body::from_stream(ReaderStream::with_capacity(reader, READ_CHUNK))
        }
        ContentBody::Reader(object) => {
            let reader = std::io::Cursor::new(head.into_bytes())
                .chain(object.take(content.size))
                .chain(std::io::Cursor::new(tail.into_bytes()));
            Body::from_stream(ReaderStream::with_capacity(reader, READ_CHUNK))
        }
        ContentBody::Bytes(bytes) => {
            let mut all = Vec::with_capacity(length as usize);
            all.extend_from_slice(head.as_bytes());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(tail.as_bytes());
            Body::from(all)
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header_value(&format!("multipart/mixed; boundary={boundary}"), "multipart/mixed"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let check = |header: &str, size: u64, expected: Ranged| {
            assert_eq!(parse_range(header, size), expected, "{header} of {size}");
        };
        check("bytes=0-99", 1000, Ranged::Part(0, 99));
        check("bytes=100-", 1000, Ranged::Part(100, 999));
        check("bytes=-100", 1000, Ranged::Part(900, 999));
        check("bytes=-5000", 1000, Ranged::Part(0, 999));
        check("bytes=900-5000", 1000, Ranged::Part(900, 999));
        check("bytes=999-999", 1000, Ranged::Part(999, 999));
        check("bytes=1000-", 1000, Ranged::Unsatisfiable);
        check("bytes=1000-2000", 1000, Ranged::Unsatisfiable);
        check("bytes=-0", 1000, Ranged::Unsatisfiable);
        check("bytes=0-", 0, Ranged::Unsatisfiable);
        check("bytes=-10", 0, Ranged::Unsatisfiable);
        // Served whole: several ranges, other units, nonsense, a reversed range.
        check("bytes=0-1,5-6", 1000, Ranged::Whole);
        check("items=0-1", 1000, Ranged::Whole);
        check("bytes=abc", 1000, Ranged::Whole);
        check("bytes=-", 1000, Ranged::Whole);
        check("bytes=50-10", 1000, Ranged::Whole);
        check("bytes=18446744073709551615-", 10, Ranged::Unsatisfiable);
    }
}
