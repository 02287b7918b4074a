//! Draining before the proxy exits, as Envoy drains under Istio on SIGTERM.
//!
//! Once a drain has begun ([`DrainSwitch::begin`]), the proxy takes no new work on the
//! connections it has and lets what is in progress finish: an HTTP/1 connection idle
//! between requests is closed, one that has sent nothing yet is closed unless its first
//! byte comes within a second, one with a request in progress is closed after its answer
//! (which says `Connection: close`), and an h2 connection is sent GOAWAY and closes once
//! its streams are done. `/ready` answers 503, so that a load balancer stops sending new
//! connections; those that still come are served the same way. The proxy exits once no
//! connection is left, or when the drain's time is up (`--drain-duration`, Istio's
//! `terminationDrainDuration`, 5 s by default).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Whether a drain has begun, for the connections to look at.
#[derive(Clone, Default)]
pub struct Drain(Arc<State>);

#[derive(Default)]
struct State {
    begun: AtomicBool,
    begins: Notify,
}

/// Begins the drain of the [`Drain`]s made with it.
pub struct DrainSwitch(Arc<State>);

/// A drain not yet begun, and the switch that begins it.
pub fn drain() -> (DrainSwitch, Drain) {
    let state = Arc::new(State::default());
    (DrainSwitch(state.clone()), Drain(state))
}

impl DrainSwitch {
    /// Begins the drain (again: no change).
    pub fn begin(&self) {
        self.0.begun.store(true, Ordering::Release);
        self.0.begins.notify_waiters();
    }
}

impl Drain {
    /// Whether the drain has begun.
    pub fn begun(&self) -> bool {
        self.0.begun.load(Ordering::Acquire)
    }

    /// Waits until the drain has begun (at once when it has).
    pub async fn begins(&self) {
        self.watch().await;
    }

    /// [`Drain::begins`] for a connection, which waits on it again and again: its task
    /// is put on the drain's list of waiters once, when first polled, and later polls
    /// look at a flag, where waiting again on a `Notify` would take a lock each time.
    /// Polled from one task only (the first poll's waker is the one woken).
    pub fn watch(&self) -> DrainWatch<'_> {
        DrainWatch {
            drain: self,
            // Made before any look at the flag: a drain begun after this wakes it.
            notified: Box::pin(self.0.begins.notified()),
            listed: false,
        }
    }
}

/// The drain's beginning, as one task waits for it ([`Drain::watch`]).
pub struct DrainWatch<'a> {
    drain: &'a Drain,
    notified: Pin<Box<Notified<'a>>>,
    /// The task's waker is on the drain's list.
    listed: bool,
}

impl Future for DrainWatch<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.begun() {
            return Poll::Ready(());
        }
        if !self.listed {
            if self.notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.listed = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_sees_the_drain_begin_and_later_ones_at_once() {
        let (switch, drain) = drain();
        assert!(!drain.begun());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let drain = drain.clone();
                tokio::spawn(async move { drain.begins().await })
            })
            .collect();
        tokio::task::yield_now().await;
        switch.begin();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .expect("ran");
        }
        assert!(drain.begun());
        tokio::time::timeout(Duration::from_secs(5), drain.begins())
            .await
            .expect("at once");
    }
}
