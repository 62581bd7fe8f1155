//! A TCP tap: a transparent proxy on 127.0.0.1:0 in front of a server that records every byte
//! in both directions. Put it between an SDK client and the relay to see exactly what the
//! relay receives and sends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Everything that crossed the tap.
#[derive(Clone, Default)]
pub struct Tap {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// Starts a tap forwarding to `upstream`; returns it and its address.
    pub async fn start(upstream: SocketAddr) -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tap = Self::default();
        let t = tap.clone();
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
                tokio::spawn(pump(cr, sw, t.clone()));
                tokio::spawn(pump(sr, cw, t.clone()));
            }
        });
        (tap, addr)
    }

    /// Total bytes seen.
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

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    tap: Tap,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tap.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
