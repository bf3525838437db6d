//! Coalesces bursts of store events into one snapshot recompute: the callback runs once the events
//! have been quiet for `quiet` (100 ms by default), or at the latest `max_delay` (2 s) after the first
//! event of a burst.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The settings of a debouncer; [`Debouncer::spawn`] starts it.
#[derive(Debug, Clone, Copy)]
pub struct Debouncer {
    /// Quiet time after the last event.
    pub quiet: Duration,
    /// Upper bound on the delay after the first event of a burst.
    pub max_delay: Duration,
}

impl Default for Debouncer {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Pokes a running debouncer; dropping every handle stops its task.
#[derive(Debug, Clone)]
pub struct DebounceHandle {
    tx: mpsc::Sender<()>,
}

impl DebounceHandle {
    /// Signals an event (never blocks; events already pending are enough).
    pub fn notify(&self) {
        let _ = self.tx.try_send(());
    }
}

impl Debouncer {
    /// Starts a task that calls `f` once per burst of events.
    pub fn spawn<F: FnMut() + Send + 'static>(self, mut f: F) -> DebounceHandle {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let cap = Instant::now() + self.max_delay;
                loop {
                    let until = (Instant::now() + self.quiet).min(cap);
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(())) if Instant::now() < cap => continue,
                        Ok(None) => {
                            f();
                            return;
                        }
                        _ => break,
                    }
                }
                f();
            }
        });
        DebounceHandle { tx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn coalesces_and_caps() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let d = Debouncer {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(300),
        };
        let h = d.spawn(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        for _ in 0..5 {
            h.notify();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // A steady stream of events still fires by the cap.
        for _ in 0..40 {
            h.notify();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(n.load(Ordering::SeqCst) >= 2);
    }
}
