//! The sidecar's stop signal: a `watch` channel that turns true once, which every listener and
//! connection watches.

use tokio::sync::watch;

/// Completes once shutdown is requested (or the sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
