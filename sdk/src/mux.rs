//! A yamux session driven by its own task, with a cloneable handle to open streams.
//!
//! yamux 0.13 makes progress only while its `Connection` is polled, and opening a stream needs
//! `&mut Connection`; so one task owns the connection, answers open requests from a bounded
//! channel and hands inbound streams to a bounded queue. When that queue is full an inbound
//! stream is reset at once (the peer sees a closed stream) instead of stalling every other
//! stream of the session. Streams are exposed as tokio `AsyncRead + AsyncWrite`.
//!
//! yamux reports a dead session to its streams as a plain end of stream. That would let a
//! tampered or truncated E2EE session look like a clean close, so the transport is watched: the
//! first transport error is recorded *before* yamux sees it, and a stream that then reads end
//! of stream gets that error instead.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// A yamux stream as a tokio byte stream. An outbound stream holds its slot of the session's
/// stream limit until it is dropped.
pub struct MuxStream {
    inner: yamux::Stream,
    _slot: Option<OwnedSemaphorePermit>,
    session: Arc<SessionShared>,
}

/// What a session's driver and its streams share.
#[derive(Default)]
struct SessionShared {
    /// The first transport error of the session.
    failure: OnceLock<String>,
    /// Streams handed out and not yet dropped: a session with live streams stays up even
    /// when every handle is gone.
    live: std::sync::atomic::AtomicUsize,
    driver: futures::task::AtomicWaker,
}

impl MuxStream {
    fn new(
        stream: yamux::Stream,
        slot: Option<OwnedSemaphorePermit>,
        session: &Arc<SessionShared>,
    ) -> Self {
        session
            .live
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self {
            inner: stream,
            _slot: slot,
            session: Arc::clone(session),
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        if self
            .session
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.session.driver.wake();
        }
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxStream({})", self.inner.id())
    }
}

/// How much of a caller's unfilled, uninitialised buffer the first read step initialises;
/// each further step in the same read doubles, up to [`READ_STEP_MAX`]. Readers such as hyper
/// hand over 8 KiB or more of fresh capacity per connection; zero-filling all of it up front
/// (what `tokio_util::compat` does) makes every page resident even when an idle connection
/// only ever receives a few hundred bytes. Stepping touches about as many bytes as arrive.
const READ_STEP_MIN: usize = 512;
const READ_STEP_MAX: usize = 64 * 1024;

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let mut end_of_stream = false;
        let mut step = READ_STEP_MIN;
        while buf.remaining() > 0 {
            let step_now = buf.remaining().min(step);
            step = (step * 2).min(READ_STEP_MAX);
            let dst = buf.initialize_unfilled_to(step_now);
            match futures::AsyncRead::poll_read(Pin::new(&mut self.inner), cx, dst) {
                Poll::Ready(Ok(0)) => {
                    end_of_stream = true;
                    break;
                }
                Poll::Ready(Ok(n)) => buf.advance(n),
                // Hand over what was read; the error shows again on the next read.
                Poll::Ready(Err(_)) if buf.filled().len() > before => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if buf.filled().len() > before => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        if end_of_stream && buf.filled().len() == before {
            if let Some(why) = self.session.failure.get() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("session failed: {why}"),
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Sends an empty data frame on a fresh stream. yamux sends nothing for a new stream until
/// its first write — so a dialer waiting for a server that speaks first would wait forever —
/// and the accepting side acknowledges only with its first frame, while an opener may have at
/// most 256 unacknowledged streams. An empty write carries the SYN (opener) or ACK (acceptor)
/// flag at once.
async fn announce(stream: &mut yamux::Stream) -> io::Result<()> {
    poll_fn(|cx| futures::AsyncWrite::poll_write(Pin::new(&mut *stream), cx, &[])).await?;
    poll_fn(|cx| futures::AsyncWrite::poll_flush(Pin::new(&mut *stream), cx)).await
}

/// Records the first read or write error of the transport under a session.
struct Watched<T> {
    io: T,
    session: Arc<SessionShared>,
}

impl<T> Watched<T> {
    fn note<R>(&self, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(e)) = &r {
            let _ = self.session.failure.set(e.to_string());
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.note(r)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.inner), cx)
    }
}

/// Which end of the session this is. The side that dialed the transport is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Session limits.
#[derive(Debug, Clone, Copy)]
pub struct MuxConfig {
    /// Concurrent streams in the session (both directions).
    pub max_streams: usize,
    /// Inbound streams waiting for `accept` before new ones are reset.
    pub max_pending_accepts: usize,
    /// Whether buffered data may still be read after the session ends. Off for sessions whose
    /// end must never look like a clean end of stream (inside the E2EE channel).
    pub read_after_close: bool,
    /// Receive-window room shared by the streams of the session beyond yamux's fixed 256 KiB
    /// per stream: what lets one busy stream grow its window past 256 KiB to cover the
    /// bandwidth-delay product, and the bound on how much a session buffers beyond the base.
    pub window_headroom: usize,
}

/// Default [`MuxConfig::window_headroom`]: 8 MiB covers ~650 Mbit/s at 100 ms RTT per session.
pub const DEFAULT_WINDOW_HEADROOM: usize = 8 * 1024 * 1024;

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            max_pending_accepts: 256,
            read_after_close: true,
            window_headroom: DEFAULT_WINDOW_HEADROOM,
        }
    }
}

impl MuxConfig {
    fn yamux(&self) -> yamux::Config {
        let mut cfg = yamux::Config::default();
        // yamux 0.13 tears the whole connection down when an open exceeds its stream cap, so
        // our own semaphore enforces `max_streams` for outbound streams and yamux gets room for
        // both directions plus streams dropped but not yet reaped by its task.
        let yamux_streams = self.max_streams.max(1) * 2 + 16;
        // yamux requires the connection window to hold 256 KiB per stream; stream windows are
        // auto-tuned (doubling while the reader keeps up within two RTTs) into the headroom
        // above that, which keeps one busy stream from being capped at 256 KiB/RTT.
        let window = yamux_streams * 256 * 1024 + self.window_headroom;
        // Window first: each setter asserts the pair is consistent with the other's value.
        cfg.set_max_connection_receive_window(Some(window));
        cfg.set_max_num_streams(yamux_streams);
        cfg.set_read_after_close(self.read_after_close);
        cfg.set_split_send_size(16 * 1024);
        cfg
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("session closed")]
    Closed,
    #[error("session stream limit of {0} reached")]
    TooManyStreams(usize),
    #[error("yamux: {0}")]
    Yamux(#[from] yamux::ConnectionError),
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, MuxError>>;

/// Cloneable handle that opens streams on a session.
#[derive(Clone)]
pub struct MuxHandle {
    open_tx: mpsc::Sender<OpenReply>,
    closed: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
    max_streams: usize,
    session: Arc<SessionShared>,
}

impl std::fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxHandle")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Inbound streams of a session. Dropping it makes every later inbound stream be reset.
pub struct MuxInbound {
    rx: mpsc::Receiver<yamux::Stream>,
    session: Arc<SessionShared>,
}

impl std::fmt::Debug for MuxInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MuxInbound")
    }
}

impl MuxInbound {
    /// Streams of this session (either direction) handed out and still alive.
    pub fn live_streams(&self) -> usize {
        self.session.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Next stream the peer opened; `None` once the session is over.
    pub async fn accept(&mut self) -> Option<MuxStream> {
        loop {
            let mut stream = self.rx.recv().await?;
            // A stream the peer already reset is skipped.
            if announce(&mut stream).await.is_ok() {
                return Some(MuxStream::new(stream, None, &self.session));
            }
        }
    }
}

impl MuxHandle {
    /// Opens a new outbound stream.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| MuxError::TooManyStreams(self.max_streams))?;
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).await.map_err(|_| MuxError::Closed)?;
        let mut stream = rx.await.map_err(|_| MuxError::Closed)??;
        announce(&mut stream).await.map_err(|_| MuxError::Closed)?;
        Ok(MuxStream::new(stream, Some(slot), &self.session))
    }

    /// Outbound streams currently open through this handle's session.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.slots.available_permits()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.open_tx.is_closed()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Starts a session over `io` on its own task. Dropping every handle *and* the inbound queue
/// closes the session.
pub fn spawn<T>(io: T, side: Side, cfg: MuxConfig) -> (MuxHandle, MuxInbound)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mode = match side {
        Side::Client => yamux::Mode::Client,
        Side::Server => yamux::Mode::Server,
    };
    let session = Arc::new(SessionShared::default());
    let watched = Watched {
        io,
        session: Arc::clone(&session),
    };
    let conn = yamux::Connection::new(watched.compat(), cfg.yamux(), mode);
    let (open_tx, open_rx) = mpsc::channel(64);
    let (inbound_tx, inbound_rx) = mpsc::channel(cfg.max_pending_accepts.max(1));
    let (closed_tx, closed_rx) = watch::channel(false);
    let driver_session = Arc::clone(&session);
    tokio::spawn(async move {
        drive(conn, open_rx, inbound_tx, &driver_session).await;
        let _ = closed_tx.send(true);
    });
    (
        MuxHandle {
            open_tx,
            closed: closed_rx,
            slots: Arc::new(Semaphore::new(cfg.max_streams.max(1))),
            max_streams: cfg.max_streams.max(1),
            session: Arc::clone(&session),
        },
        MuxInbound {
            rx: inbound_rx,
            session,
        },
    )
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open_rx: mpsc::Receiver<OpenReply>,
    inbound_tx: mpsc::Sender<yamux::Stream>,
    session: &SessionShared,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut pending_open: Option<OpenReply> = None;
    let mut opens_done = false;
    let result = poll_fn(|cx| {
        // Open requests, one at a time (yamux hands out outbound streams in order).
        loop {
            if pending_open.is_none() && !opens_done {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => pending_open = Some(reply),
                    Poll::Ready(None) => opens_done = true,
                    Poll::Pending => {}
                }
            }
            let Some(reply) = pending_open.take() else {
                break;
            };
            if reply.is_closed() {
                continue;
            }
            match conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    let failed = result.is_err();
                    let _ = reply.send(result.map_err(MuxError::from));
                    if failed {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending => {
                    pending_open = Some(reply);
                    break;
                }
            }
        }
        // Inbound streams; polling this also drives all I/O of the session.
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Full queue or nobody accepting: dropping the stream resets it.
                    let _ = inbound_tx.try_send(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        // Nobody can open or accept any more: close once the last stream is gone.
        if opens_done && inbound_tx.is_closed() && pending_open.is_none() {
            session.driver.register(cx.waker());
            if session.live.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "mux session ended with an error");
    }
    // Tell the peer we are gone (bounded: a dead peer must not hold this task).
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        poll_fn(|cx| conn.poll_close(cx)),
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_open_both_ways_and_carry_data() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ha, mut ia) = spawn(a, Side::Client, MuxConfig::default());
        let (hb, mut ib) = spawn(b, Side::Server, MuxConfig::default());

        let mut s = ha.open().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s.flush().await.unwrap();
        let mut r = ib.accept().await.unwrap();
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        let mut s = hb.open().await.unwrap();
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        let mut r = ia.accept().await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn dropping_the_transport_closes_the_handle() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ha, _ia) = spawn(a, Side::Client, MuxConfig::default());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), ha.closed())
            .await
            .unwrap();
        assert!(ha.open().await.is_err());
    }
}
