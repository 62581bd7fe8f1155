//! Length-prefixed protobuf frames: a u32 big-endian length, then that many bytes of one message.
//!
//! The length is checked against a hard limit *before* anything is allocated, and exactly the
//! frame's bytes are read — never more — because a data stream switches to raw bytes right after
//! its opening frame. Anything malformed is an error for the caller to answer by closing the
//! stream; nothing here panics on input.

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream closed before a frame")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` with its length prefix, refusing messages over `max` bytes.
pub fn encode_frame<M: Message>(msg: &M, max: usize) -> Result<BytesMut, FrameError> {
    let len = msg.encoded_len();
    // An empty body would be refused by every decoder (see `check_len`): refuse it here too.
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32(len as u32);
    // Infallible: the buffer has exactly the capacity prost asked for.
    msg.encode(&mut buf)
        .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    Ok(buf)
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed; on
/// success returns the message and how many bytes it used.
pub fn decode_frame<M: Message + Default>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(M, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    check_len(len, max)?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((M::decode(body)?, 4 + len)))
}

fn check_len(len: usize, max: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(())
}

/// Reads exactly one frame from `io`.
pub async fn read_frame<M, R>(io: &mut R, max: usize) -> Result<M, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    match io.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    check_len(len, max)?;
    let mut body = vec![0u8; len];
    match io.read_exact(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Truncated)
        }
        Err(e) => return Err(e.into()),
    }
    Ok(M::decode(body.as_slice())?)
}

/// Writes one frame and flushes it.
pub async fn write_frame<M, W>(io: &mut W, msg: &M, max: usize) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let buf = encode_frame(msg, max)?;
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::protocol::{client_frame, ClientFrame, Connect};
    use proptest::prelude::*;

    fn connect(lease: &str) -> ClientFrame {
        ClientFrame::new(client_frame::Msg::Connect(Connect {
            lease: lease.into(),
            alpn: String::new(),
        }))
    }

    #[tokio::test]
    async fn round_trip_leaves_following_bytes_unread() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &connect("x"), 1024).await.unwrap();
        a.write_all(b"raw").await.unwrap();
        let got: ClientFrame = read_frame(&mut b, 1024).await.unwrap();
        assert_eq!(got, connect("x"));
        let mut rest = [0u8; 3];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"raw");
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<ClientFrame, _>(&mut b, 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let err = read_frame::<ClientFrame, _>(&mut b, 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let err = read_frame::<ClientFrame, _>(&mut b, 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        assert!(matches!(
            encode_frame(&ClientFrame { msg: None }, 50),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn encode_refuses_messages_over_the_limit() {
        let err = encode_frame(&connect(&"x".repeat(100)), 50).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame::<ClientFrame>(&bytes, 128);
        }

        #[test]
        fn encode_decode_round_trip(lease in "\\PC{0,40}", alpn in "[a-z0-9/.]{0,12}") {
            let frame = ClientFrame::new(client_frame::Msg::Connect(Connect { lease, alpn }));
            let buf = encode_frame(&frame, 4096).unwrap();
            let (back, used) = decode_frame::<ClientFrame>(&buf, 4096).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(back, frame);
        }
    }
}
