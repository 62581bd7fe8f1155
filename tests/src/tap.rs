//! Wire taps for the tests: transparent proxies on 127.0.0.1:0 in front of the relay.
//!
//! Both speak just enough WebSocket framing to see what the relay sees: [`Tap`] records every
//! message payload in both directions *after unmasking* (client → relay frames are masked, and
//! masking is not encryption), [`Tamper`] flips one bit in a relay → client message on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What a proxy does to each WebSocket frame it forwards: sees the unmasked payload, and may
/// flip a bit in the frame it forwards.
trait FrameHook: Clone + Send + 'static {
    fn frame(&self, from_relay: bool, payload: &[u8], frame: &mut [u8]);
}

async fn start_proxy<H: FrameHook>(upstream: SocketAddr, hook: H) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump_frames(cr, sw, hook.clone(), false));
            tokio::spawn(pump_frames(sr, cw, hook.clone(), true));
        }
    });
    addr
}

async fn pump_frames<H: FrameHook>(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    hook: H,
    from_relay: bool,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut in_http_header = true;
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        if in_http_header {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            out.extend(buf.drain(..end + 4));
            in_http_header = false;
        }
        while let Some((header_len, payload_len, mask)) = ws_frame(&buf) {
            let total = header_len + payload_len;
            if buf.len() < total {
                break;
            }
            let mut frame: Vec<u8> = buf.drain(..total).collect();
            let mut payload = frame[header_len..].to_vec();
            if let Some(mask) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            hook.frame(from_relay, &payload, &mut frame);
            out.extend(frame);
        }
        if to.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Header length, payload length and mask of the WebSocket frame at the start of `buf`, once
/// its header is complete.
fn ws_frame(buf: &[u8]) -> Option<(usize, usize, Option<[u8; 4]>)> {
    let b1 = *buf.get(1)?;
    let (mut header, len) = match b1 & 0x7f {
        126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(bytes) as usize)
        }
        n => (2, n as usize),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(header..header + 4)?.try_into().ok()?;
        header += 4;
        Some(m)
    } else {
        None
    };
    Some((header, len, mask))
}

/// Records every WebSocket payload the relay receives or sends on connections through it.
#[derive(Clone, Default)]
pub struct Tap {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl FrameHook for Tap {
    fn frame(&self, _from_relay: bool, payload: &[u8], _frame: &mut [u8]) {
        self.bytes.lock().unwrap().extend_from_slice(payload);
    }
}

impl Tap {
    /// Starts a tap forwarding to `upstream`; returns it and its address.
    pub async fn start(upstream: SocketAddr) -> (Self, SocketAddr) {
        let tap = Self::default();
        let addr = start_proxy(upstream, tap.clone()).await;
        (tap, addr)
    }

    /// Total payload bytes seen.
    pub fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `needle` occurs anywhere in what was seen.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

/// Flips one bit in the next large message the relay sends to the client behind it (the bit
/// lands in the yamux payload: spliced ciphertext).
#[derive(Clone, Default)]
pub struct Tamper {
    armed: Arc<AtomicBool>,
    flipped: Arc<AtomicUsize>,
}

impl FrameHook for Tamper {
    fn frame(&self, from_relay: bool, payload: &[u8], frame: &mut [u8]) {
        if from_relay && payload.len() >= 512 && self.armed.swap(false, Ordering::SeqCst) {
            let last = frame.len() - 1;
            frame[last] ^= 0x01;
            self.flipped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Tamper {
    pub async fn start(upstream: SocketAddr) -> (Self, SocketAddr) {
        let tamper = Self::default();
        let addr = start_proxy(upstream, tamper.clone()).await;
        (tamper, addr)
    }

    /// Flip a bit in the next relay → client message of at least 512 bytes.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many messages were tampered with.
    pub fn flipped(&self) -> usize {
        self.flipped.load(Ordering::SeqCst)
    }
}
