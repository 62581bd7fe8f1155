//! Evidence: the append-only log of every mutation and every gateway denial, its writer, its
//! signed checkpoints, and the walk that verifies it.
//!
//! Events reach the store through one bounded queue and one writer task, which appends them
//! in batches (one transaction per batch, sealed by [`crate::chain`]) and signs a checkpoint
//! every [`AuditSettings::checkpoint_every`] entries and at shutdown.
//!
//! **When the queue is full.** Two kinds of callers, two rules:
//! * a mutation of the API ([`Audit::record`]) waits for room and for its batch to be
//!   written, bounded by [`AuditSettings::record_timeout`]; past it the mutation fails with
//!   503 — a change is never acknowledged without its evidence on disk;
//! * the gateway's data path ([`Audit::try_record`]) never waits: an event that finds the
//!   queue full is dropped and counted ([`Audit::dropped`], exported by the gateway as
//!   `postern_audit_events_dropped_total`, with an alert in `deploy/`), and a warning is
//!   logged at most once per [`DROP_LOG_INTERVAL`]. The chain itself stays intact: a dropped
//!   event is never written, so nothing in the chain is missing that was sealed.
//!
//! This module never holds a secret in an event: callers pass ids, never keys or tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{self, ChainBreak, Walker};
use crate::store::{now_ms, Store, StoreError};

/// Shortest time between two "audit queue full" warnings.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Rows read per query while verifying or exporting.
const PAGE: u32 = 1000;

/// The writer's bounds.
#[derive(Debug, Clone, Copy)]
pub struct AuditSettings {
    /// Events waiting for the writer.
    pub queue: usize,
    /// Events per append transaction.
    pub batch: usize,
    /// Entries between two signed checkpoints.
    pub checkpoint_every: i64,
    /// Longest a mutation waits for its event to be written.
    pub record_timeout: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            queue: 4096,
            batch: 256,
            checkpoint_every: 100,
            record_timeout: Duration::from_secs(5),
        }
    }
}

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log did not take the event in time")]
    Timeout,
    #[error("the audit writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Ack = oneshot::Sender<Result<(), String>>;

/// The handle events are recorded through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<(Value, Option<Ack>)>,
    dropped: Arc<AtomicU64>,
    /// When the last "queue full" warning was logged (locked only on a drop).
    last_drop_log: Arc<std::sync::Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl Audit {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Arc<dyn Store>, key: SigningKey, settings: AuditSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(write_loop(store, key, settings, rx));
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            last_drop_log: Arc::new(std::sync::Mutex::new(None)),
            timeout: settings.record_timeout,
        }
    }

    /// Records a mutation's event and waits until it is written (bounded).
    pub async fn record(&self, event: Value) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        let deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline.into(), self.tx.send((event, Some(ack))))
            .await
            .map_err(|_| AuditError::Timeout)?
            .map_err(|_| AuditError::Stopped)?;
        match tokio::time::timeout_at(deadline.into(), done).await {
            Err(_) => Err(AuditError::Timeout),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Ok(Ok(Err(e))) => Err(AuditError::Store(StoreError::Database(e))),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Records a data-path event without waiting; a full queue drops and counts it.
    pub fn try_record(&self, event: Value) {
        if self.tx.try_send((event, None)).is_err() {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self
                .last_drop_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL) {
                *last = Some(Instant::now());
                tracing::warn!(dropped_total = total, "audit queue full: events dropped");
            }
        }
    }

    /// Events dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    key: SigningKey,
    settings: AuditSettings,
    mut rx: mpsc::Receiver<(Value, Option<Ack>)>,
) {
    let mut last_checkpoint = match store.checkpoints().await {
        Ok(cps) => cps.last().map_or(0, |c| c.seq),
        Err(_) => 0,
    };
    let mut batch = Vec::with_capacity(settings.batch.max(1));
    while rx.recv_many(&mut batch, settings.batch.max(1)).await > 0 {
        let (events, acks): (Vec<Value>, Vec<Option<Ack>>) = batch.drain(..).unzip();
        let result = store.append_audit(&events).await;
        let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        if let Err(e) = &result {
            tracing::error!(error = %e, events = events.len(), "audit append failed");
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(outcome.clone());
        }
        if let Ok(rows) = result {
            if let Some(last) = rows.last() {
                if last.seq - last_checkpoint >= settings.checkpoint_every.max(1) {
                    let cp = chain::sign_checkpoint(&key, last, now_ms());
                    match store.insert_checkpoint(&cp).await {
                        Ok(()) => last_checkpoint = last.seq,
                        Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
                    }
                }
            }
        }
    }
    // Every handle is gone: sign the tail so that a cut after shutdown is detected too.
    checkpoint_tail(&*store, &key, last_checkpoint).await;
}

async fn checkpoint_tail(store: &dyn Store, key: &SigningKey, last_checkpoint: i64) {
    if let Ok(Some(tail)) = store.audit_tail().await {
        if tail.seq > last_checkpoint {
            let cp = chain::sign_checkpoint(key, &tail, now_ms());
            if let Err(e) = store.insert_checkpoint(&cp).await {
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }
}

/// Signs a checkpoint at the current tail now (for `postern audit checkpoint` and tests).
pub async fn checkpoint_now(store: &dyn Store, key: &SigningKey) -> Result<(), StoreError> {
    if let Some(tail) = store.audit_tail().await? {
        store
            .insert_checkpoint(&chain::sign_checkpoint(key, &tail, now_ms()))
            .await?;
    }
    Ok(())
}

/// What a verification found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: usize,
    /// The last entry, `(seq, hash)`.
    pub last: Option<(i64, String)>,
}

/// Why verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Walks the whole log and every checkpoint; `trusted` is the control plane's public key.
/// Names the first entry that was altered, removed or reordered, or the checkpoint that
/// shows the tail was cut.
pub async fn verify(
    store: &dyn Store,
    trusted: &VerifyingKey,
) -> Result<VerifyReport, VerifyError> {
    let checkpoints = store.checkpoints().await?;
    for cp in &checkpoints {
        if !chain::checkpoint_signed_by(cp, trusted) {
            return Err(ChainBreak::BadSignature { seq: cp.seq }.into());
        }
    }
    let mut pending = checkpoints.iter().peekable();
    let mut walker = Walker::new();
    let mut after = 0;
    loop {
        let rows = store.audit_rows(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            walker.next(row)?;
            while let Some(cp) = pending.peek() {
                if cp.seq > row.seq {
                    break;
                }
                if cp.seq == row.seq && cp.hash != row.hash {
                    return Err(ChainBreak::CheckpointMismatch { seq: cp.seq }.into());
                }
                pending.next();
            }
        }
    }
    if let Some(cp) = pending.next() {
        let last = walker.last().map_or(0, |(s, _)| s);
        return Err(ChainBreak::Truncated { seq: cp.seq, last }.into());
    }
    Ok(VerifyReport {
        entries: walker.count(),
        checkpoints: checkpoints.len(),
        last: walker.last().map(|(s, h)| (s, h.to_owned())),
    })
}

/// Writes every entry as one JSON line to `out`, in order.
pub async fn export(
    store: &dyn Store,
    out: &mut (dyn std::io::Write + Send),
) -> Result<u64, StoreError> {
    let mut after = 0;
    let mut n = 0;
    loop {
        let rows = store.audit_rows(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            writeln!(out, "{}", row.entry).map_err(|e| StoreError::Database(e.to_string()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// An audit event: `action` (`"key.create"`, `"gateway.deny"`, …) by `actor` (a token id,
/// `"gateway"`) in `workspace`, on `target`, with `detail`. Never pass a secret.
pub fn event(
    action: &str,
    actor: &str,
    workspace: Option<&str>,
    target: Option<&str>,
    detail: Value,
) -> Value {
    json!({
        "at": now_ms(),
        "action": action,
        "actor": actor,
        "workspace": workspace,
        "target": target,
        "detail": detail,
    })
}
