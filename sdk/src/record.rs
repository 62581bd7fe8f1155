//! The E2EE record layer: a byte stream sealed with ChaCha20-Poly1305 after a Noise handshake.
//!
//! Wire format: each record is a u16 big-endian length followed by that many bytes of AEAD
//! ciphertext (plaintext + 16-byte tag), nonces are per-direction counters, and both sides
//! rekey every [`REKEY_INTERVAL`] records without any signalling. A record with an empty
//! plaintext is the authenticated end of stream (close_notify): a transport that ends without
//! it is reported as truncation, never as a clean end. The first record that fails
//! authentication poisons the stream — no byte of it, or of anything after it, is returned.
//!
//! Records are decrypted in place in the receive buffer and handed out from there; outgoing
//! data is copied once into the send buffer and sealed in place.
//!
//! Writes are coalesced into records: a write appends to the open record at the tail of the
//! send buffer, which is sealed when it is full or on flush. A flush with an open record first
//! yields once (waking itself) so that whatever else the writing task has ready this turn —
//! yamux writes a frame's 12-byte header and its body as two writes, and flushes after every
//! frame — joins the same record: one AEAD operation and one relay frame instead of several.
//! A flush completes once the open record has stopped growing, so it never waits on a timer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::noise::{CipherState, Split, MAX_MESSAGE_LEN, TAG_LEN};

/// Largest plaintext in one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_MESSAGE_LEN - TAG_LEN;
/// Records per direction between two rekeys.
pub const REKEY_INTERVAL: u64 = 1 << 16;
/// Sealed bytes queued for the transport before writers must wait.
const SEND_HIGH_WATER: usize = 256 * 1024;

/// An encrypted, authenticated byte stream over `T`.
pub struct SecureStream<T> {
    io: T,
    send: CipherState,
    recv: CipherState,
    handshake_hash: [u8; 32],
    /// Ciphertext received and not yet decrypted.
    rbuf: BytesMut,
    /// Decrypted plaintext not yet handed to the reader.
    plain: Bytes,
    /// Sealed records not yet written to the transport, then the open record, if any.
    wbuf: BytesMut,
    /// Offset in `wbuf` of the open (unsealed) record's length prefix.
    open: Option<usize>,
    /// Length of the open record when a flush last yielded to let it grow.
    flush_yielded_at: Option<usize>,
    read_state: ReadState,
    close_notify_sent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer's close_notify arrived: clean end of stream.
    Closed,
    /// Authentication failed or the transport was truncated: every read is an error.
    Poisoned,
}

impl<T> std::fmt::Debug for SecureStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("sent_records", &self.send.nonce())
            .field("received_records", &self.recv.nonce())
            .finish_non_exhaustive()
    }
}

fn poisoned() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "e2ee record failed authentication",
    )
}

impl<T> SecureStream<T> {
    pub fn new(io: T, split: Split) -> Self {
        Self {
            io,
            send: split.send,
            recv: split.recv,
            handshake_hash: split.handshake_hash,
            rbuf: BytesMut::new(),
            plain: Bytes::new(),
            wbuf: BytesMut::new(),
            open: None,
            flush_yielded_at: None,
            read_state: ReadState::Open,
            close_notify_sent: false,
        }
    }

    /// The Noise handshake hash: a unique, authenticated id of this session.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Appends up to one record's worth of `data` to the open record (opening one if needed)
    /// and seals it when full; returns how many bytes were taken.
    fn buffer(&mut self, data: &[u8]) -> io::Result<usize> {
        let start = match self.open {
            Some(start) => start,
            None => {
                let start = self.wbuf.len();
                self.wbuf
                    .reserve(2 + data.len().min(MAX_RECORD_PLAINTEXT) + TAG_LEN);
                self.wbuf.put_u16(0);
                self.open = Some(start);
                start
            }
        };
        let room = MAX_RECORD_PLAINTEXT - (self.wbuf.len() - start - 2);
        let n = data.len().min(room);
        self.wbuf.extend_from_slice(&data[..n]);
        if n == room {
            self.seal_open()?;
        }
        Ok(n)
    }

    /// Seals the open record, if any.
    fn seal_open(&mut self) -> io::Result<()> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        let plaintext_len = self.wbuf.len() - start - 2;
        debug_assert!(plaintext_len <= MAX_RECORD_PLAINTEXT);
        if self.send.nonce() > 0 && self.send.nonce() % REKEY_INTERVAL == 0 {
            self.send.rekey();
        }
        let len = (plaintext_len + TAG_LEN) as u16;
        self.wbuf[start..start + 2].copy_from_slice(&len.to_be_bytes());
        let tag = self
            .send
            .encrypt_in_place(&[], &mut self.wbuf[start + 2..])
            .map_err(io::Error::other)?;
        self.wbuf.extend_from_slice(&tag);
        Ok(())
    }

    /// Seals what is open, then an empty record: the authenticated end of stream.
    fn seal_close_notify(&mut self) -> io::Result<()> {
        self.seal_open()?;
        self.open = Some(self.wbuf.len());
        self.wbuf.put_u16(0);
        self.seal_open()
    }

    /// Decrypts the next complete record in `rbuf`, if any, into `plain`.
    fn open_record(&mut self) -> io::Result<bool> {
        if self.rbuf.len() < 2 {
            return Ok(false);
        }
        let len = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
        if len < TAG_LEN {
            self.read_state = ReadState::Poisoned;
            return Err(poisoned());
        }
        if self.rbuf.len() < 2 + len {
            self.rbuf.reserve(2 + len - self.rbuf.len());
            return Ok(false);
        }
        let mut record = self.rbuf.split_to(2 + len);
        record.advance(2);
        if self.recv.nonce() > 0 && self.recv.nonce() % REKEY_INTERVAL == 0 {
            self.recv.rekey();
        }
        let Ok(pt_len) = self.recv.decrypt_in_place(&[], &mut record) else {
            self.read_state = ReadState::Poisoned;
            return Err(poisoned());
        };
        if pt_len == 0 {
            self.read_state = ReadState::Closed;
        } else {
            record.truncate(pt_len);
            self.plain = record.freeze();
        }
        Ok(true)
    }
}

impl<T: AsyncWrite + Unpin> SecureStream<T> {
    /// Writes sealed records to the transport until it would block or none are left (the open
    /// record stays).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let sealed = self.open.unwrap_or(self.wbuf.len());
            if sealed == 0 {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[..sealed]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
            if let Some(open) = &mut self.open {
                *open -= n;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SecureStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.read_state {
                ReadState::Open => {}
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Poisoned => return Poll::Ready(Err(poisoned())),
            }
            if this.open_record()? {
                continue;
            }
            if this.rbuf.capacity() - this.rbuf.len() < 4096 {
                this.rbuf.reserve(16 * 1024);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rbuf
            ))?;
            if n == 0 {
                this.read_state = ReadState::Poisoned;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "e2ee stream truncated: transport closed without close_notify",
                )));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SecureStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_notify_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.wbuf.len() >= SEND_HIGH_WATER {
            this.seal_open()?;
            ready!(this.poll_drain(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = this.buffer(buf)?;
        // Opportunistic: push sealed records now; the open one goes on flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(start) = this.open {
            let open_len = this.wbuf.len() - start;
            if this.flush_yielded_at != Some(open_len) {
                // Let the rest of this turn's writes join the open record (module docs).
                this.flush_yielded_at = Some(open_len);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.seal_open()?;
        }
        this.flush_yielded_at = None;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_notify_sent {
            self.seal_close_notify()?;
            self.close_notify_sent = true;
        }
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::noise::{Initiator, Responder, StaticKeypair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn splits() -> (Split, Split) {
        let a = StaticKeypair::generate();
        let b = StaticKeypair::generate();
        let mut i = Initiator::new(&a, b.public(), b"t");
        let mut r = Responder::new(&b, b"t");
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        let (m2, rs) = r.write_message(b"").unwrap();
        let (_, is) = i.read_message(&m2).unwrap();
        (is, rs)
    }

    #[tokio::test]
    async fn writes_before_a_flush_share_one_record() {
        let (is, rs) = splits();
        let (a_io, mut a_raw) = tokio::io::duplex(1 << 16);
        let mut a = SecureStream::new(a_io, is);
        // yamux's pattern: a 12-byte frame header, a flush, the body, a flush.
        a.write_all(&[1u8; 12]).await.unwrap();
        {
            // The first flush yields so that the body can join.
            let flush = std::pin::pin!(a.flush());
            assert!(futures::poll!(flush).is_pending());
        }
        a.write_all(&[2u8; 100]).await.unwrap();
        a.flush().await.unwrap();
        let mut record = vec![0u8; 2 + 112 + TAG_LEN];
        a_raw.read_exact(&mut record).await.unwrap();
        assert_eq!(
            u16::from_be_bytes([record[0], record[1]]) as usize,
            112 + TAG_LEN
        );
        let mut more = [0u8; 1];
        let nothing_else =
            tokio::time::timeout(std::time::Duration::from_millis(50), a_raw.read(&mut more)).await;
        assert!(nothing_else.is_err(), "a second record was sent");

        let (b_io, mut b_raw) = tokio::io::duplex(1 << 16);
        let mut b = SecureStream::new(b_io, rs);
        b_raw.write_all(&record).await.unwrap();
        let mut plain = [0u8; 112];
        b.read_exact(&mut plain).await.unwrap();
        assert_eq!(&plain[..12], &[1u8; 12]);
        assert_eq!(&plain[12..], &[2u8; 100]);
    }

    fn pair(cap: usize) -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(cap);
        let (sa, sb) = splits();
        (SecureStream::new(a, sa), SecureStream::new(b, sb))
    }

    #[tokio::test]
    async fn large_transfer_round_trips_across_rekeys() {
        let (mut a, mut b) = pair(1 << 16);
        // Enough tiny records to cross a rekey boundary (a flush closes each one), then a chunk
        // spanning several full records.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = Vec::new();
        for i in 0..(REKEY_INTERVAL + 10) {
            let chunk = [(i % 251) as u8; 3];
            a.write_all(&chunk).await.unwrap();
            a.flush().await.unwrap();
            sent.extend_from_slice(&chunk);
        }
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        a.write_all(&big).await.unwrap();
        sent.extend_from_slice(&big);
        a.shutdown().await.unwrap();
        assert!(a.send.nonce() > REKEY_INTERVAL, "no rekey was crossed");
        assert_eq!(reader.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn tampered_record_closes_stream_without_yielding_data() {
        let (raw_a, mut raw_mid) = tokio::io::duplex(1 << 16);
        let (mut mid_out, raw_b) = tokio::io::duplex(1 << 16);
        let (sa, sb) = splits();
        let mut a = SecureStream::new(raw_a, sa);
        let mut b = SecureStream::new(raw_b, sb);
        a.write_all(b"attack at dawn").await.unwrap();
        a.flush().await.unwrap();
        let mut wire = vec![0u8; 2 + 14 + TAG_LEN];
        raw_mid.read_exact(&mut wire).await.unwrap();
        wire[5] ^= 0x01;
        mid_out.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 64];
        let err = b.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(buf, [0u8; 64]);
        // Poisoned for good.
        assert!(b.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn truncation_is_an_error_not_eof() {
        let (raw_a, raw_b) = tokio::io::duplex(1 << 16);
        let (sa, sb) = splits();
        let mut a = SecureStream::new(raw_a, sa);
        let mut b = SecureStream::new(raw_b, sb);
        a.write_all(b"partial").await.unwrap();
        a.flush().await.unwrap();
        drop(a);
        let mut got = Vec::new();
        let err = b.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"partial");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the write sizes and the transport's buffer, bytes arrive intact and in order.
        #[test]
        fn any_write_pattern_round_trips(
            writes in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70_000), 0..8),
            cap in 1usize..100_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async move {
                let (mut a, mut b) = pair(cap);
                let expected: Vec<u8> = writes.concat();
                let reader = tokio::spawn(async move {
                    let mut got = Vec::new();
                    b.read_to_end(&mut got).await.unwrap();
                    got
                });
                for w in &writes {
                    a.write_all(w).await.unwrap();
                }
                a.shutdown().await.unwrap();
                assert_eq!(reader.await.unwrap(), expected);
            });
        }
    }

    #[tokio::test]
    async fn undersized_length_poisons() {
        let (raw_a, mut raw_b) = tokio::io::duplex(64);
        let (_, sb) = splits();
        let mut b = SecureStream::new(raw_a, sb);
        raw_b.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let mut buf = [0u8; 8];
        assert!(b.read(&mut buf).await.is_err());
    }
}
