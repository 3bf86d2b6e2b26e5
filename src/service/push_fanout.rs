//! The push fan-out: one outbox queue following the push log (`Notifications::logged_after`),
//! which turns each event that notifies anyone into `notifications` rows for the members
//! with pushers (`Notifications::fan_out`) and rings their pushers' queues. The append path
//! writes one log row per event whatever the room's size; the per-member work happens here,
//! after the acknowledgement, on the outbox's low-priority thread, and is durable: the
//! queue's place moves only once an event's rows are written, so a crash repeats the last
//! event at worst (its rows are rewritten as they were).

use std::sync::Arc;

use super::{
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    push::Notifications,
    push_gateway::PushGateways,
    stream::{Change, Stream},
};
use crate::Result;

/// The one queue's destination.
const ALL: &str = "all";

pub struct PushFanout {
    notifications: Arc<Notifications>,
    gateways: Arc<PushGateways>,
}

impl PushFanout {
    /// Start the queue (after the outbox), from where it stopped or, the first time, from
    /// the stream's committed position; rung by every committed room change.
    pub fn start(
        notifications: Arc<Notifications>,
        gateways: Arc<PushGateways>,
        outbox: &Arc<Outbox>,
        stream: &Stream,
    ) -> Result<Arc<Self>> {
        let me = Arc::new(Self { notifications, gateways });
        outbox.serve(&me);
        outbox.open(Self::KIND, ALL, stream.committed(), false)?;
        outbox.resume(&me, ALL);
        outbox.ring_on_commits(stream, Self::KIND, |change| matches!(change, Change::Room(_)));
        Ok(me)
    }
}

impl Courier for PushFanout {
    type Parcel = ();
    const KIND: &'static str = "push-fanout";
    const BATCH: usize = 64;

    fn pending(&self, _: &str, after: u64, limit: usize) -> Result<Option<Parcels<()>>> {
        Ok(Some(
            self.notifications.logged_after(after, limit)?.into_iter().map(|stream| (stream, ())).collect(),
        ))
    }

    fn deliver<'a>(&'a self, _: &'a str, parcels: &'a [(u64, ())]) -> Delivering<'a> {
        Box::pin(async move {
            for (stream, ()) in parcels {
                match self.notifications.fan_out(*stream) {
                    Ok(users) => self.gateways.notified(users.iter().map(AsRef::as_ref)),
                    // The storage failed: the whole batch is tried again (rows are rewritten
                    // as they were).
                    Err(e) => return Delivery::Retry(format!("writing notification rows failed: {e}")),
                }
            }
            Delivery::Done
        })
    }
}
