//! Delayed events (MSC4140) from the client's side: scheduling one (checked as far as it can
//! be before it is sent), listing a user's, the management actions (cancel, restart, send
//! now), and the timer that sends each when it is due. An event is sent as its owner through
//! the path an immediate `PUT /send` or `PUT /state` takes (membership, auth rules, push,
//! sync wake-ups), so what the owner may send is decided then, not when it was scheduled;
//! one that cannot be sent any more (the owner left the room, say) is dropped with a log
//! line, as Synapse does. What is stored, the limits and the rules on who may act live in
//! `DelayedEvents`.

use std::{sync::Arc, time::Duration};

use ruma::{DeviceId, OwnedEventId, RoomId, UserId};
use serde_json::Value as JsonValue;
use tokio::sync::watch;

use super::{
    actions::RoomActions,
    membership::MembershipActions,
    timeline::{Timeline, Txn},
};
use crate::{
    Error, Result,
    service::{
        clock::Clock,
        delayed_events::{Caller, DelayedEvents, NewDelayedEvent},
    },
    storage::tables::DelayedEventRecord,
};

/// How often the timer reads the table again without being rung.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// How many due events the timer takes out at a time.
const DUE_BATCH: usize = 100;
/// How long the timer waits before trying again after its storage failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A delayed event as a client asks for it.
pub struct DelayRequest<'a> {
    pub room_id: &'a RoomId,
    pub kind: &'a str,
    /// Present for a state event (`PUT /state`).
    pub state_key: Option<&'a str>,
    pub content: JsonValue,
    pub delay_ms: u64,
    /// The transaction of a `PUT /send`.
    pub txn: Option<Txn<'a>>,
}

/// What scheduling answered.
pub enum Scheduled {
    /// The delay ID of the new delayed event, or of the one a retransmission made.
    Delayed(String),
    /// The transaction ID was already used to send an event at once; a retransmission gets
    /// that answer, as Synapse gives the cached response of a transaction.
    AlreadySent(OwnedEventId),
}

/// A management action on a delayed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Restart,
    Send,
}

pub struct DelayedActions {
    delayed: Arc<DelayedEvents>,
    timeline: Arc<Timeline>,
    room_actions: Arc<RoomActions>,
    membership: Arc<MembershipActions>,
    clock: Arc<dyn Clock>,
}

impl DelayedActions {
    pub fn new(
        delayed: Arc<DelayedEvents>,
        timeline: Arc<Timeline>,
        room_actions: Arc<RoomActions>,
        membership: Arc<MembershipActions>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { delayed, timeline, room_actions, membership, clock }
    }

    /// `PUT /send` or `PUT /state` with `org.matrix.msc4140.delay`: store the event to be
    /// sent after the delay. A retransmitted transaction gets its first answer; then the
    /// delay is checked against the configuration (`403` when delayed events are off, `400`
    /// past the maximum), the event as far as it can be before it is sent (the answers an
    /// immediate send would give bad content), and the per-user limit (`429`).
    pub fn schedule(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        req: DelayRequest<'_>,
    ) -> Result<Scheduled> {
        if let Some(txn) = req.txn {
            if let Some(delay_id) = self.delayed.txn_delay_id(user_id, txn.device_id, txn.path)? {
                return Ok(Scheduled::Delayed(delay_id));
            }
            if let Some(event_id) = self.timeline.txn_event(user_id, txn)? {
                return Ok(Scheduled::AlreadySent(event_id));
            }
        }
        self.delayed.check_delay(req.delay_ms)?;
        if req.kind == "m.room.member"
            && let Some(state_key) = req.state_key
        {
            // A membership change is made when it is sent by the flow its `membership`
            // names (as `PUT /state/m.room.member` does); its shape is checked now.
            UserId::parse(state_key).map_err(|e| {
                Error::invalid_param(format!("The state key of a member event is a user ID: {e}"))
            })?;
            if !matches!(req.content.get("membership"), Some(JsonValue::String(_))) {
                return Err(Error::bad_json("Member event content needs a membership string"));
            }
        }
        self.room_actions.check_delayed(
            user_id,
            req.room_id,
            req.kind,
            req.state_key,
            req.content.clone(),
        )?;
        let content = serde_json::value::to_raw_value(&req.content)
            .map_err(|e| Error::bad_json(format!("content: {e}")))?;
        let delay_id = self.delayed.schedule(NewDelayedEvent {
            user_id,
            device_id,
            room_id: req.room_id,
            kind: req.kind,
            state_key: req.state_key,
            content,
            delay_ms: req.delay_ms,
            txn_path: req.txn.map(|t| t.path),
        })?;
        Ok(Scheduled::Delayed(delay_id))
    }

    /// `GET /delayed_events`: the user's waiting delayed events, soonest first.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(String, DelayedEventRecord)>> {
        self.delayed.list(user_id)
    }

    /// `GET /delayed_events/{delay_id}`: one of the user's waiting delayed events.
    pub fn get(&self, user_id: &UserId, delay_id: &str) -> Result<DelayedEventRecord> {
        self.delayed.get(user_id, delay_id)
    }

    /// `POST /delayed_events/{delay_id}[/{action}]`. `send` sends the event now and answers
    /// the send's error if it fails (the delayed event is then gone, as on Synapse).
    pub async fn act(&self, delay_id: &str, action: Action, caller: Caller<'_>) -> Result<()> {
        match action {
            Action::Cancel => self.delayed.cancel(delay_id, caller),
            Action::Restart => self.delayed.restart(delay_id, caller),
            Action::Send => {
                let record = self.delayed.claim(delay_id, caller)?;
                let sent = self.send(delay_id, &record).await;
                let finished = self.delayed.finish(delay_id);
                if let Err(e) = &sent {
                    log_dropped(delay_id, &record, e);
                }
                sent?;
                finished
            }
        }
    }

    /// The timer: send every delayed event when it is due, until `stop`. Events overdue at
    /// start (the server was down when they were due) are sent at once. It waits on the
    /// server's clock, so a test moving the manual clock wakes it.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let next = match self.send_due().await.and_then(|()| self.delayed.next_due()) {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "the delayed-event timer failed to read its events");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let due = async {
                match next {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = due => {}
                () = self.delayed.changed() => {}
                // A delayed event scheduled by another process sharing the database rings
                // no bell here: the table is read again now and then.
                () = tokio::time::sleep(RESCAN_EVERY) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Send everything due now, a batch at a time.
    async fn send_due(&self) -> Result<()> {
        loop {
            let due = self.delayed.claim_due(DUE_BATCH)?;
            if due.is_empty() {
                return Ok(());
            }
            for (delay_id, record) in due {
                match self.send(&delay_id, &record).await {
                    Ok(event_id) => tracing::debug!(
                        delay_id = %delay_id, event_id = %event_id, room_id = %record.room_id,
                        "delayed event sent"
                    ),
                    Err(e) => log_dropped(&delay_id, &record, &e),
                }
                if let Err(e) = self.delayed.finish(&delay_id) {
                    tracing::warn!(delay_id = %delay_id, error = %e, "removing a sent delayed event failed");
                }
            }
        }
    }

    /// Send a claimed delayed event as its owner.
    async fn send(&self, delay_id: &str, record: &DelayedEventRecord) -> Result<OwnedEventId> {
        let content: JsonValue = serde_json::from_str(record.content.get())
            .map_err(|e| Error::internal(format!("stored delayed event content: {e}")))?;
        match record.state_key.as_deref() {
            Some(state_key) if record.kind == "m.room.member" => {
                let target = UserId::parse(state_key)
                    .map_err(|e| Error::internal(format!("stored member state key: {e}")))?;
                self.membership.set_member_state(&record.user_id, &record.room_id, &target, content).await
            }
            state_key => {
                self.room_actions
                    .send_from_delay(
                        &record.user_id,
                        &record.room_id,
                        &record.kind,
                        state_key,
                        content,
                        delay_id,
                    )
                    .await
            }
        }
    }
}

fn log_dropped(delay_id: &str, record: &DelayedEventRecord, error: &Error) {
    tracing::warn!(
        delay_id = %delay_id,
        user_id = %record.user_id,
        room_id = %record.room_id,
        kind = %record.kind,
        error = %error,
        "delayed event could not be sent and is dropped"
    );
}
