//! One connection's life: HTTP/1.1 through hyper, with the timeouts that keep slow or idle
//! clients from holding connections (and memory) for ever, none of which runs while a request
//! is being answered, so long-polls are never cut off:
//!
//! - the head timeout: from the connection's start, or from the first byte after an idle
//!   spell, the request line and headers must arrive within `request_header_timeout`;
//! - the body timeout: a request body that yields nothing for `request_body_timeout` while
//!   its handler reads it fails with [`BodyTimedOut`] (the handler answers 408 and hyper
//!   closes the connection, whose body was not read to its end);
//! - the idle timeout: with no request in flight and no byte moved for
//!   `keep_alive_timeout`, the connection is closed.
//!
//! The head and idle timeouts are enforced by a watcher beside the connection, which reads
//! the connection's [`Activity`] (atomics updated by the I/O wrapper and the request
//! wrapper) and wakes only at the next deadline.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{Request, Response, body::Incoming};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
    time::{Instant, Sleep},
};
use tower::{Service, ServiceExt};

use super::NetStats;

/// The timeouts of every connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub keep_alive: Duration,
}

/// What a connection is doing, for its watcher. Times are milliseconds since the
/// connection's start.
struct Activity {
    start: Instant,
    /// Requests handed to the service and not yet answered.
    in_flight: AtomicUsize,
    /// When a byte last moved either way.
    last_io: AtomicU64,
    /// When the head of the next request began arriving (the connection's start for the
    /// first), or `NO_HEAD` when no head is being read.
    head_since: AtomicU64,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read_some(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // Bytes with no request in flight: the next head has begun (keep the earliest).
            let _ = self.head_since.compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote_some(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Release);
    }

    fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// The next time to look, or `Err` with why the connection must close now.
    fn next_check(&self, timeouts: &Timeouts) -> Result<u64, Expired> {
        let now = self.now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Answering: no timeout of ours applies; look again later.
            return Ok(now + ms(timeouts.keep_alive));
        }
        let head_since = self.head_since.load(Ordering::Acquire);
        if head_since != NO_HEAD {
            let deadline = head_since.saturating_add(ms(timeouts.header));
            return if now >= deadline { Err(Expired::Header) } else { Ok(deadline) };
        }
        let deadline = self.last_io.load(Ordering::Relaxed).saturating_add(ms(timeouts.keep_alive));
        if now >= deadline { Err(Expired::Idle) } else { Ok(deadline) }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

#[derive(Debug)]
enum Expired {
    Header,
    Idle,
}

/// Marks the end of a request when dropped (answered, or abandoned by a client gone away).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Serve HTTP/1.1 on `io` with `service` until the client goes, a timeout closes it, or
/// `stop` asks for a graceful end (the request in flight is finished first).
pub(super) async fn drive<IO, S, B>(
    io: IO,
    service: S,
    timeouts: Timeouts,
    stats: Arc<NetStats>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let io = Tracked { inner: io, activity: Arc::clone(&activity) };
    let request_activity = Arc::clone(&activity);
    let body_stats = Arc::clone(&stats);
    let hyper_service = hyper::service::service_fn(move |request: Request<Incoming>| {
        request_activity.request_began();
        let guard = InFlight(Arc::clone(&request_activity));
        let stats = Arc::clone(&body_stats);
        let request = request.map(|body| TimedBody::new(body, timeouts.body, stats));
        let answer = service.clone().oneshot(request);
        async move {
            let response = answer.await;
            drop(guard);
            response
        }
    });
    // hyper's own head timeout stays off: the watcher below times heads (and idle spells).
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(hyper_util::rt::TokioIo::new(io), hyper_service);
    tokio::pin!(connection);
    let mut stopping = *stop.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        let check_at = match activity.next_check(&timeouts) {
            Ok(at) => at,
            Err(expired) => {
                match expired {
                    Expired::Header => stats.header_timeouts.fetch_add(1, Ordering::Relaxed),
                    Expired::Idle => stats.idle_closed.fetch_add(1, Ordering::Relaxed),
                };
                tracing::debug!(?expired, "closing a connection");
                // Dropping the connection closes the socket.
                return;
            }
        };
        let sleep_until = activity.start + Duration::from_millis(check_at);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(sleep_until) => {}
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// An I/O stream that notes each byte moved in the connection's [`Activity`].
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_some();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_some();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyTimedOut`] when it yields nothing for the body
/// timeout while it is being read.
pub struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    stats: Arc<NetStats>,
    timed_out: bool,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration, stats: Arc<NetStats>) -> Self {
        Self { inner, timeout, stall: None, stats, timed_out: false }
    }
}

/// The error of a request body that stalled past `request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A body read failure: the stall timeout, or the connection's own error.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    TimedOut(#[from] BodyTimedOut),
    #[error(transparent)]
    Connection(#[from] hyper::Error),
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall = None;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let stall = this.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                this.timed_out = true;
                this.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTimedOut(timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or anything in its chain of sources) is a body stall.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimedOut>() || matches!(e.downcast_ref::<BodyError>(), Some(BodyError::TimedOut(_))) {
            return true;
        }
        current = e.source();
    }
    false
}
