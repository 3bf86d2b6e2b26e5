//! Requests through an HTTP `CONNECT` proxy (`federation_proxy`), for a server whose only way
//! out is the company's forward proxy.
//!
//! The proxy is asked for a tunnel to an address, never a name: the caller's [`Vet`]
//! resolves the destination and checks it (the federation client's resolves SRV targets and
//! applies the outbound address guard, as for a direct connection), and the `CONNECT` names
//! that address. So the guard, the SRV targets and the TLS checks hold as without a proxy;
//! the proxy only carries the bytes. TLS runs inside the tunnel under the destination's
//! name (no SNI for an IP literal). The proxy itself is the operator's choice.

use std::{
    error::Error as StdError,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

type BoxError = Box<dyn StdError + Send + Sync>;

/// From a destination's host and port to the one address a tunnel may go to, or why none.
pub type Vet = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = Result<SocketAddr, BoxError>> + Send>> + Send + Sync,
>;

/// The longest proxy answer to a `CONNECT` read before the tunnel is given up.
const MAX_PROXY_ANSWER: usize = 8 * 1024;

/// Where the proxy is and how to log in to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` (Basic) from the URL's user and password.
    authorization: Option<String>,
}

impl ProxySettings {
    /// Read `http://[user:password@]host[:port]` (port 80 when not given); an `https` proxy
    /// is not supported, nor anything after the authority.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!("{url}: only an http:// proxy (asked with CONNECT) is supported"));
        }
        if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("{url}: a proxy URL names a host and port only"));
        }
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("{url} names no host")),
        };
        let authorization = (!parsed.username().is_empty()).then(|| {
            let user = percent_decoded(parsed.username());
            let password = parsed.password().map(percent_decoded).unwrap_or_default();
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {credentials}")
        });
        Ok(Self { host, port: parsed.port().unwrap_or(80), authorization })
    }
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// An HTTP/1.1 client whose every connection is a tunnel through the proxy; connections are
/// pooled per destination.
#[derive(Clone)]
pub struct TunnelClient {
    client: Client<TunnelConnector, Full<Bytes>>,
}

impl TunnelClient {
    pub fn new(
        proxy: ProxySettings,
        vet: Vet,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Self {
        let connector = TunnelConnector {
            inner: Arc::new(ConnectorInner { proxy, vet, tls: TlsConnector::from(tls), connect_timeout }),
        };
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector);
        Self { client }
    }

    /// Send `request` (an absolute URL) and answer once its head arrived, within `timeout`
    /// (which also bounds reading the body).
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<reqwest::Response, BoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let request = request.map(|body| Full::new(Bytes::from(body)));
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| BoxError::from("the request timed out"))??;
        let response = response.map(|body| reqwest::Body::wrap(DeadlineBody::new(body, deadline)));
        Ok(reqwest::Response::from(response))
    }
}

struct ConnectorInner {
    proxy: ProxySettings,
    vet: Vet,
    tls: TlsConnector,
    connect_timeout: Duration,
}

#[derive(Clone)]
struct TunnelConnector {
    inner: Arc<ConnectorInner>,
}

impl tower::Service<Uri> for TunnelConnector {
    type Response = Tunnel;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Tunnel, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let connect = inner.open(&uri);
            tokio::time::timeout(inner.connect_timeout, connect)
                .await
                .map_err(|_| BoxError::from(format!("no tunnel to {uri} through the proxy in time")))?
        })
    }
}

impl ConnectorInner {
    async fn open(&self, uri: &Uri) -> Result<Tunnel, BoxError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("cannot tunnel the scheme {other:?}").into()),
        };
        let host = uri.host().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = (self.vet)(host.to_owned(), port).await?;
        let mut stream =
            TcpStream::connect((self.proxy.host.as_str(), self.proxy.port)).await.map_err(|e| {
                format!("the proxy {}:{} cannot be reached: {e}", self.proxy.host, self.proxy.port)
            })?;
        let _ = stream.set_nodelay(true);
        self.ask_for_tunnel(&mut stream, address).await?;
        if !https {
            return Ok(Tunnel(TokioIo::new(Stream::Plain(stream))));
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let tls = self.tls.connect(name, stream).await?;
        Ok(Tunnel(TokioIo::new(Stream::Tls(Box::new(tls)))))
    }

    /// `CONNECT address`, and the proxy's `2xx` answer read up to its blank line.
    async fn ask_for_tunnel(&self, stream: &mut TcpStream, address: SocketAddr) -> Result<(), BoxError> {
        let mut ask = format!("CONNECT {address} HTTP/1.1\r\nHost: {address}\r\n");
        if let Some(authorization) = &self.proxy.authorization {
            ask.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        ask.push_str("\r\n");
        stream.write_all(ask.as_bytes()).await?;
        let mut answer = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        // Byte by byte: nothing of the tunnel's own traffic may be read here.
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_PROXY_ANSWER {
                return Err("the proxy's answer to CONNECT is too long".into());
            }
            if stream.read(&mut byte).await? == 0 {
                return Err("the proxy closed the connection instead of answering CONNECT".into());
            }
            answer.push(byte[0]);
        }
        let status_line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
        let status_line = String::from_utf8_lossy(status_line).trim_end().to_owned();
        let status = status_line.split(' ').nth(1).and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(code) if (200..300).contains(&code) => Ok(()),
            _ => Err(format!("the proxy refused a tunnel to {address}: {status_line}").into()),
        }
    }
}

/// The tunnel's byte stream: TLS inside it for `https`.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection through the proxy, as the HTTP client drives it.
struct Tunnel(TokioIo<Stream>);

impl Connection for Tunnel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A response body that fails once `deadline` passes (the direct client's whole-request
/// timeout, for the body read after the head).
struct DeadlineBody {
    inner: hyper::body::Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, deadline: tokio::time::Instant) -> Self {
        Self { inner, sleep: Box::pin(tokio::time::sleep_until(deadline)) }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the answer timed out".into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::ProxySettings;

    #[test]
    fn proxy_urls_are_read_with_their_credentials() {
        let plain = ProxySettings::parse("http://proxy.corp.example:3128").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.authorization),
            ("proxy.corp.example", 3128, None)
        );
        let default_port = ProxySettings::parse("http://10.0.0.1").unwrap();
        assert_eq!(default_port.port, 80);
        let v6 = ProxySettings::parse("http://[fd00::1]:8080/").unwrap();
        assert_eq!(v6.host, "fd00::1");
        let with_login = ProxySettings::parse("http://conduit:s%3Acret@proxy:3128").unwrap();
        // base64("conduit:s:cret")
        assert_eq!(with_login.authorization.as_deref(), Some("Basic Y29uZHVpdDpzOmNyZXQ="));
        for bad in ["https://proxy:3128", "socks5://proxy:1080", "http://proxy:3128/path", "not a url"] {
            assert!(ProxySettings::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
