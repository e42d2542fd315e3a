//! The live feed behind `/v1/monitor/events`: one task takes a monitor snapshot a second
//! for every subscriber (a dashboard open in ten tabs costs one snapshot a second, not
//! ten), and the number of subscribers is bounded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::state::AppState;

/// Most clients watching at once; one more is answered 503.
pub const MAX_SUBSCRIBERS: usize = 32;

/// The feed of one server.
pub struct LiveFeed {
    period: Duration,
    sender: OnceLock<watch::Sender<Arc<str>>>,
    subscribers: Arc<Semaphore>,
}

/// One subscriber's view: the latest snapshot and a place among the subscribers (given
/// back when it is dropped).
pub struct Subscription {
    pub snapshots: watch::Receiver<Arc<str>>,
    pub place: OwnedSemaphorePermit,
}

impl LiveFeed {
    /// A feed that takes a snapshot every `period` while anyone watches.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            sender: OnceLock::new(),
            subscribers: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
        }
    }

    /// A new subscription, `None` when [`MAX_SUBSCRIBERS`] are watching. The first one
    /// starts the task that takes the snapshots (on the current runtime).
    pub fn subscribe(&self, state: &AppState) -> Option<Subscription> {
        let place = Arc::clone(&self.subscribers).try_acquire_owned().ok()?;
        let sender = self.sender.get_or_init(|| {
            let (sender, _) = watch::channel(Arc::from(crate::monitor::snapshot(state).to_string()));
            let producer = sender.clone();
            let state = state.clone();
            let period = self.period;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    // The channel keeps no receiver of its own: none left, no snapshot.
                    if producer.receiver_count() > 0 {
                        producer.send_replace(Arc::from(crate::monitor::snapshot(&state).to_string()));
                    }
                }
            });
            sender
        });
        Some(Subscription {
            snapshots: sender.subscribe(),
            place,
        })
    }
}
