//! Where the gateway's log lines go: a bounded in-memory buffer that a thread of its own
//! writes to stderr, so that no request ever waits on a `write(2)` to a pipe, a file or a
//! terminal.
//!
//! Logging synchronously from the request path (tracing's default `std::io::stderr` writer)
//! puts one blocking write per access-log line on a tokio worker thread: in the gateway bench
//! that stalled the workers enough to nearly double the CPU per request of the gateway *and*
//! of the relay behind it (less batching everywhere). Here a line costs a lock and a copy; the
//! writer thread wakes every [`FLUSH_EVERY`] (or as soon as [`WAKE_AT`] bytes are waiting) and
//! writes everything in one go.
//!
//! The buffer is bounded ([`MAX_BUFFERED`]): when the output cannot keep up, whole lines are
//! dropped, counted, and the count is written as a line of its own once there is room again —
//! logging never grows memory without bound and never blocks a request. [`LogSink::flush`]
//! writes what is left at exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How often the writer thread writes what has been buffered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer thread early.
pub const WAKE_AT: usize = 64 * 1024;
/// Most bytes held; lines past it are dropped and counted.
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

/// The sink: a `tracing_subscriber` writer (`MakeWriter`) and its writer thread.
#[derive(Debug, Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

impl LogSink {
    /// Starts the writer thread, writing to stderr.
    pub fn stderr() -> std::io::Result<Self> {
        Self::to(std::io::stderr())
    }

    /// Starts the writer thread, writing to `out`.
    pub fn to<W: Write + Send + 'static>(mut out: W) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("postern-log".into())
            .spawn(move || loop {
                let batch = {
                    let buffer = thread_shared
                        .buffer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let (mut buffer, _) = thread_shared
                        .wake
                        .wait_timeout(buffer, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner);
                    take(&mut buffer)
                };
                if !batch.is_empty() {
                    // Nowhere to report a failing stderr: the lines are lost.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                }
            })?;
        Ok(Self { shared })
    }

    /// Writes what is buffered now, from the calling thread (at exit).
    pub fn flush(&self) {
        let batch = take(
            &mut self
                .shared
                .buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&batch).and_then(|()| err.flush());
    }

    /// Buffers one whole line (or several); dropped, and counted, when the buffer is full.
    pub fn push_line(&self, line: &[u8]) {
        let mut buffer = self
            .shared
            .buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if buffer.bytes.len() + line.len() > MAX_BUFFERED {
            buffer.dropped += 1;
            return;
        }
        buffer.bytes.extend_from_slice(line);
        if buffer.bytes.len() >= WAKE_AT {
            self.shared.wake.notify_one();
        }
    }
}

/// What is buffered, with a line for lines dropped since the last batch.
fn take(buffer: &mut Buffer) -> Vec<u8> {
    let mut batch = std::mem::take(&mut buffer.bytes);
    if buffer.dropped > 0 {
        let note = format!(
            "{{\"level\":\"WARN\",\"target\":\"postern::log\",\"fields\":{{\"message\":\"log lines dropped: the output did not keep up\",\"dropped\":{}}}}}\n",
            buffer.dropped
        );
        batch.extend_from_slice(note.as_bytes());
        buffer.dropped = 0;
    }
    batch
}

/// One event's writer: tracing formats a whole line and writes it in one call.
#[derive(Debug)]
pub struct LineWriter<'a> {
    sink: &'a LogSink,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.push_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { sink: self }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// An output that keeps what is written, for tests of what reaches the log.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_soon_after() {
        let out = Captured::default();
        let sink = LogSink::to(out.clone()).unwrap();
        for i in 0..100 {
            sink.push_line(format!("line {i}\n").as_bytes());
        }
        std::thread::sleep(FLUSH_EVERY * 4);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_full_buffer_drops_whole_lines_and_says_how_many() {
        let mut buffer = Buffer {
            bytes: vec![b'x'; 10],
            dropped: 3,
        };
        let batch = String::from_utf8(take(&mut buffer)).unwrap();
        assert!(batch.starts_with("xxxxxxxxxx{"), "{batch}");
        assert!(batch.contains("\"dropped\":3"), "{batch}");
        assert_eq!(buffer.dropped, 0);
    }
}
