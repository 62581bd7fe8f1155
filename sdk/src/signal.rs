//! The stop signals of Postern's long-running commands (`postern-relay`, `postern-gateway`,
//! `postern up`, `postern expose`): SIGTERM, which service managers and Kubernetes send, or
//! Ctrl-C (SIGINT).

/// Resolves on the next SIGTERM or Ctrl-C. Where SIGTERM cannot be watched (not Unix, or the
/// handler cannot be installed), on Ctrl-C alone.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
