//! Adapts a WebSocket into a plain byte stream (`AsyncRead + AsyncWrite`) for yamux.
//!
//! Writes are coalesced: bytes accumulate until a flush (or until the buffer reaches the
//! message size cap) and then go out as one binary message, so a yamux frame header and its
//! body never cost two WebSocket messages. yamux flushes after every frame; a flush with
//! bytes pending first yields once (waking itself) so the other frames its task has ready
//! this turn join the same message — one message and one `sendto` for a burst of frames
//! instead of one each. A flush completes once the buffer has stopped growing. Reads hand out binary message payloads without
//! copying them into an intermediate buffer. Text messages are a protocol violation; a close
//! frame is end of stream. Ping/pong is answered by tungstenite itself.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{self, Message};

/// Largest binary message this adapter writes.
pub const MAX_WRITE_MESSAGE: usize = 256 * 1024;

/// A WebSocket seen as a byte stream.
pub struct WsByteStream<S> {
    ws: S,
    read_buf: Bytes,
    write_buf: BytesMut,
    /// Length of `write_buf` when a flush last yielded to let it grow.
    flush_yielded_at: Option<usize>,
    read_closed: bool,
}

impl<S> WsByteStream<S> {
    pub fn new(ws: S) -> Self {
        Self {
            ws,
            read_buf: Bytes::new(),
            write_buf: BytesMut::with_capacity(16 * 1024),
            flush_yielded_at: None,
            read_closed: false,
        }
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S> WsByteStream<S>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    /// Sends the pending write buffer as one binary message (without flushing the sink).
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let payload = self.write_buf.split().freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(payload))
            .map_err(to_io)?;
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncRead for WsByteStream<S>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read_buf.is_empty() {
                let n = self.read_buf.len().min(buf.remaining());
                buf.put_slice(&self.read_buf[..n]);
                self.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.read_buf = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.read_closed = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary tunnel",
                    )))
                }
                Some(Err(tungstenite::Error::ConnectionClosed)) => self.read_closed = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsByteStream<S>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_buf.len() >= MAX_WRITE_MESSAGE {
            ready!(self.poll_send_pending(cx))?;
        }
        let n = buf.len().min(MAX_WRITE_MESSAGE - self.write_buf.len());
        self.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pending = self.write_buf.len();
        if pending > 0 {
            if self.flush_yielded_at != Some(pending) {
                // Let the rest of this turn's frames join the message (module docs).
                self.flush_yielded_at = Some(pending);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_send_pending(cx))?;
            self.flush_yielded_at = None;
        }
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    #[tokio::test]
    async fn bytes_cross_in_both_directions_and_close_is_eof() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let a = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut a = WsByteStream::new(a);
        let mut b = WsByteStream::new(b);
        let payload: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                a.write_all(&payload).await.unwrap();
                a.shutdown().await.unwrap();
                a
            })
        };
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn writes_before_a_flush_share_one_message() {
        use futures::StreamExt;
        let (a, b) = tokio::io::duplex(1 << 16);
        let a = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut b = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let mut a = WsByteStream::new(a);
        a.write_all(&[1u8; 12]).await.unwrap();
        {
            // The first flush yields so that the body can join.
            let flush = std::pin::pin!(a.flush());
            assert!(futures::poll!(flush).is_pending());
        }
        a.write_all(&[2u8; 100]).await.unwrap();
        a.flush().await.unwrap();
        match b.next().await.unwrap().unwrap() {
            Message::Binary(data) => assert_eq!(data.len(), 112),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn text_message_is_an_error() {
        use futures::SinkExt;
        let (a, b) = tokio::io::duplex(1024);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        a.send(Message::text("hi")).await.unwrap();
        let mut b = WsByteStream::new(b);
        let mut buf = [0u8; 8];
        assert!(b.read(&mut buf).await.is_err());
    }
}
