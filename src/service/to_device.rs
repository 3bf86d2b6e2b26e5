//! To-device messages: queued per recipient device in stream order, delivered by that
//! device's syncs a bounded batch at a time and deleted once it syncs past them, so none is
//! lost across a restart or a dropped response. Owns the `to_device`, `to_device_delivered`,
//! `to_device_txns` and `appservice_to_device` tables.
//!
//! Messages for the devices of an application service's users, when its registration asks
//! for encryption support (`org.matrix.msc3202`), are also listed for that appservice, which
//! takes them in its transactions (MSC2409) instead of a sync: once its queue on the outbox
//! moves past them they are deleted like synced ones.
//!
//! Everything here is bounded: one message's size, what one device may have waiting, and
//! what one response carries. A message that cannot be read back (stored by an older
//! version without those bounds) is dropped with a log line, never an error, so it cannot
//! stop the device's syncs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::Serialize;
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Error, Result,
    matrix::limits::{
        self, MAX_EVENT_TYPE_BYTES, MAX_JSON_DEPTH, MAX_TO_DEVICE_CONTENT_BYTES, MAX_TXN_ID_BYTES,
    },
    service::{
        appservices::Appservices,
        devices::Devices,
        stream::{Change, Stream},
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{APPSERVICE_TO_DEVICE, TO_DEVICE, TO_DEVICE_DELIVERED, TO_DEVICE_TXNS, ToDeviceRecord},
    },
};

/// Messages one response carries (Synapse's number); the rest follow on the next sync.
pub const MAX_PER_RESPONSE: usize = 100;
/// Bytes of content one response carries; at least one message always goes, so a full-size
/// message is never stuck.
pub const MAX_BYTES_PER_RESPONSE: usize = 1024 * 1024;

/// Where a message goes: one device or all (`*`).
pub enum Target {
    Device(OwnedDeviceId),
    AllDevices,
}

/// What one device has waiting, as far as this process has counted.
#[derive(Clone, Copy, Default)]
struct Usage {
    messages: u64,
    bytes: u64,
}

type DeviceKey = (OwnedUserId, OwnedDeviceId);

/// A to-device event as a sync delivers it; `content` is written out as stored, not parsed.
#[derive(Serialize)]
struct Delivered<'a> {
    sender: &'a UserId,
    #[serde(rename = "type")]
    kind: &'a str,
    content: &'a RawJsonValue,
}

/// A to-device event as an appservice's transaction carries it: it also names the device.
#[derive(Serialize)]
struct ForAppservice<'a> {
    sender: &'a UserId,
    #[serde(rename = "type")]
    kind: &'a str,
    content: &'a RawJsonValue,
    to_user_id: &'a UserId,
    to_device_id: &'a DeviceId,
}

type AppserviceRow = (String, u64, OwnedUserId, OwnedDeviceId);

/// What one device may have waiting (config `to_device_queue_max_*`): a device that never
/// syncs must not fill the disk. The byte bound holds the message bound of real messages
/// (room keys are 1–3 kB), not of messages padded to the size limit.
#[derive(Clone, Copy)]
pub struct QueueLimits {
    pub messages: u64,
    pub bytes: u64,
}

pub struct ToDevice {
    limits: QueueLimits,
    queue: Table<(OwnedUserId, OwnedDeviceId, u64), ToDeviceRecord>,
    delivered: Table<(OwnedUserId, OwnedDeviceId, u64), u64>,
    txns: Table<(OwnedUserId, OwnedDeviceId, String), ()>,
    for_appservices: Table<AppserviceRow, ()>,
    devices: Arc<Devices>,
    appservices: Arc<Appservices>,
    stream: Arc<Stream>,
    store: Arc<dyn KvStore>,
    /// What each device has waiting, counted from its queue the first time it is needed and
    /// kept up to date by every write here, so a send does not scan the queue.
    usage: Mutex<HashMap<DeviceKey, Usage>>,
    /// Whether `usage` may be kept between sends: not when other processes share the
    /// database (their sends and deliveries do not pass here), where it is counted at each
    /// send (the queue it counts is bounded by the limits themselves).
    keep_usage: bool,
}

impl ToDevice {
    pub fn new(
        store: &Arc<dyn KvStore>,
        limits: QueueLimits,
        devices: Arc<Devices>,
        appservices: Arc<Appservices>,
        stream: Arc<Stream>,
    ) -> Self {
        Self {
            limits,
            queue: TO_DEVICE.open(store),
            delivered: TO_DEVICE_DELIVERED.open(store),
            txns: TO_DEVICE_TXNS.open(store),
            for_appservices: APPSERVICE_TO_DEVICE.open(store),
            devices,
            appservices,
            stream,
            store: Arc::clone(store),
            usage: Mutex::new(HashMap::new()),
            keep_usage: store.member().is_none(),
        }
    }

    /// `PUT /sendToDevice/{eventType}/{txnId}`: queue each message for its devices, once per
    /// sending device and transaction. Messages for devices that do not exist are dropped (as
    /// Synapse does), and so are messages for a device whose queue is full: the sender cannot
    /// empty it, and refusing would also stop its messages to every other device.
    pub fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        kind: &str,
        txn_id: &str,
        messages: BTreeMap<OwnedUserId, Vec<(Target, Box<RawJsonValue>)>>,
    ) -> Result<()> {
        limits::check_len(kind, MAX_EVENT_TYPE_BYTES, "The event type").map_err(Error::invalid_param)?;
        limits::check_len(txn_id, MAX_TXN_ID_BYTES, "The transaction ID").map_err(Error::invalid_param)?;
        for (user_id, targets) in &messages {
            for (target, content) in targets {
                let size = content.get().len();
                if size > MAX_TO_DEVICE_CONTENT_BYTES {
                    let device = match target {
                        Target::Device(device) => device.as_str(),
                        Target::AllDevices => "*",
                    };
                    return Err(Error::too_large(format!(
                        "To-device message for {user_id}:{device} is too large to send \
                         ({size} > {MAX_TO_DEVICE_CONTENT_BYTES})"
                    )));
                }
            }
        }
        let txn = (sender.to_owned(), sender_device.to_owned(), txn_id.to_owned());
        if self.txns.contains(&txn)? {
            return Ok(());
        }

        // Who gets what, before anything is counted.
        let mut planned: Vec<(DeviceKey, Box<RawJsonValue>)> = Vec::new();
        for (user_id, targets) in messages {
            // Users of other servers have no devices here (`RemoteE2ee` sends theirs).
            let existing: Vec<OwnedDeviceId> =
                self.devices.list(&user_id)?.into_iter().map(|d| d.device_id).collect();
            for (target, content) in targets {
                let devices = match target {
                    Target::Device(device) if existing.contains(&device) => vec![device],
                    Target::Device(_) => Vec::new(),
                    Target::AllDevices => existing.clone(),
                };
                for device in devices {
                    planned.push(((user_id.clone(), device), content.clone()));
                }
            }
        }

        let registry = self.appservices.registry();
        let reservation = self.stream.reserve()?;
        let position = reservation.position;
        let mut batch = WriteBatch::new();
        let mut recipients = Vec::new();
        let mut counted: Vec<(DeviceKey, Usage)> = Vec::new();
        {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            for (device, content) in planned {
                let size = content.get().len() as u64;
                let waiting = self.usage_of(&mut usage, &device)?;
                if waiting.messages >= self.limits.messages
                    || waiting.bytes.saturating_add(size) > self.limits.bytes
                {
                    tracing::warn!(
                        user_id = %device.0, device_id = %device.1, waiting = waiting.messages,
                        "to-device queue full; message dropped"
                    );
                    continue;
                }
                let record = ToDeviceRecord { sender: sender.to_owned(), kind: kind.to_owned(), content };
                self.queue.put(&mut batch, &(device.0.clone(), device.1.clone(), position), &record)?;
                if let Some(appservice) =
                    registry.list.iter().find(|a| a.msc3202 && a.url.is_some() && a.may_act_as(&device.0))
                {
                    let row = (appservice.id.clone(), position, device.0.clone(), device.1.clone());
                    self.for_appservices.put(&mut batch, &row, &())?;
                }
                let added = Usage { messages: 1, bytes: size };
                add(waiting, added);
                recipients.push(device.0.clone());
                counted.push((device, added));
            }
        }
        self.txns.put(&mut batch, &txn, &())?;
        if let Err(e) = self.store.write(batch) {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            for (device, added) in &counted {
                if let Some(waiting) = usage.get_mut(device) {
                    subtract(waiting, *added);
                }
            }
            return Err(e.into());
        }
        recipients.dedup();
        reservation.announce(recipients.into_iter().map(Change::User));
        Ok(())
    }

    /// The device's messages for a response answering with the token `upto`, the client
    /// having come back with `since`. Coming back with a token acknowledges what the response
    /// that gave it delivered: all messages up to it, or, if that response was cut short,
    /// those up to the last it held. The rest go now, at most [`MAX_PER_RESPONSE`] messages
    /// and about [`MAX_BYTES_PER_RESPONSE`] bytes; when that cuts them short, the cut is
    /// recorded under `upto` for the next call, and the stream moves past `upto` so that no
    /// other response answers with the same token.
    pub fn take(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let device = (user_id.to_owned(), device_id.to_owned());
        let key = |position: u64| (user_id.to_owned(), device_id.to_owned(), position);
        let acknowledged = match since {
            Some(since) => {
                let cut = self.delivered.get(&key(since))?;
                let through = cut.map_or(since, |last| last.min(since));
                self.acknowledge(&device, through, since)?;
                if cut.is_some() && upto <= since {
                    // The rest of a cut-short response would go out under the same token
                    // again, and coming back with it could then not say which of the two
                    // the client holds. The token moves on (see below); wait for it.
                    return Ok(Vec::new());
                }
                Some(through)
            }
            None => None,
        };

        let mut range = KeyRange::prefix(device.to_key_bytes()).up_to(key(upto).to_key_bytes());
        if let Some(acknowledged) = acknowledged {
            range = range.after(key(acknowledged).to_key_bytes());
        }
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        let mut cut_short = false;
        for row in self.queue.scan(range, Direction::Forward)? {
            let ((_, _, position), record) = row?;
            let size = record.content.get().len();
            if events.len() >= MAX_PER_RESPONSE
                || (!events.is_empty() && bytes.saturating_add(size) > MAX_BYTES_PER_RESPONSE)
            {
                cut_short = true;
                break;
            }
            last = Some(position);
            match deliverable(&record) {
                Ok(event) => {
                    bytes = bytes.saturating_add(size);
                    events.push(event);
                }
                Err(reason) => tracing::warn!(
                    %user_id, %device_id, position, sender = %record.sender, reason,
                    "stored to-device message cannot be delivered; dropped"
                ),
            }
        }
        if cut_short && let Some(last) = last {
            self.delivered.insert(&key(upto), &last)?;
            // Move the stream on, so the response with the rest answers with a later token
            // than this one, and wake this device's long-poll for it.
            self.stream.reserve()?.announce([Change::User(user_id.to_owned())]);
        }
        Ok(events)
    }

    /// Messages listed for an appservice after `after` up to `upto`, in order, as its
    /// transactions carry them: about `limit`, never splitting the messages of one stream
    /// position (the appservice's queue moves by positions). One deleted meanwhile (its
    /// device synced it, or was deleted) is left out.
    pub fn for_appservice(
        &self,
        appservice_id: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, serde_json::Value)>> {
        let mut found = Vec::new();
        for row in
            self.for_appservices.scan(appservice_range(appservice_id, after, upto), Direction::Forward)?
        {
            let ((_, position, user_id, device_id), ()) = row?;
            if found.len() >= limit && found.last().is_some_and(|(last, _)| *last != position) {
                break;
            }
            let Some(record) = self.queue.get(&(user_id.clone(), device_id.clone(), position))? else {
                continue;
            };
            if limits::json_too_deep(record.content.get().as_bytes(), MAX_JSON_DEPTH) {
                tracing::warn!(
                    %user_id, %device_id, position,
                    "stored to-device message nested too deep; not sent to the appservice"
                );
                continue;
            }
            let event = ForAppservice {
                sender: &record.sender,
                kind: &record.kind,
                content: &record.content,
                to_user_id: &user_id,
                to_device_id: &device_id,
            };
            let value = serde_json::to_value(&event).map_err(|e| Error::internal(e.to_string()))?;
            found.push((position, value));
        }
        Ok(found)
    }

    /// The appservice's queue has moved past `through`: delete what was listed for it up to
    /// there, with the messages themselves.
    pub fn appservice_took(&self, appservice_id: &str, through: u64) -> Result<()> {
        let mut batch = WriteBatch::new();
        let mut removed: Vec<(DeviceKey, Usage)> = Vec::new();
        for row in
            self.for_appservices.scan(appservice_range(appservice_id, 0, through), Direction::Forward)?
        {
            let (key, ()) = row?;
            let (_, position, user_id, device_id) = &key;
            let message = (user_id.clone(), device_id.clone(), *position);
            if let Some(record) = self.queue.get(&message)? {
                self.queue.delete(&mut batch, &message);
                let size = record.content.get().len() as u64;
                removed.push(((user_id.clone(), device_id.clone()), Usage { messages: 1, bytes: size }));
            }
            self.for_appservices.delete(&mut batch, &key);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write(batch)?;
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (device, less) in removed {
            if let Some(waiting) = usage.get_mut(&device) {
                subtract(waiting, less);
            }
        }
        Ok(())
    }

    /// Delete the device's messages up to `through` and the records of cut-short responses
    /// before the token `since` (acknowledged, or from responses the client never used).
    fn acknowledge(&self, device: &DeviceKey, through: u64, since: u64) -> Result<()> {
        let (user_id, device_id) = device;
        let prefix = KeyRange::prefix(device.to_key_bytes());
        let mut batch = WriteBatch::new();
        let mut removed = Usage::default();
        let messages = prefix.clone().up_to((user_id.clone(), device_id.clone(), through).to_key_bytes());
        for row in self.queue.scan(messages, Direction::Forward)? {
            let (key, record) = row?;
            add(&mut removed, Usage { messages: 1, bytes: record.content.get().len() as u64 });
            self.queue.delete(&mut batch, &key);
        }
        // The record under `since` itself stays: if this response is lost, the client comes
        // back with the same token and must get the same answer.
        let cuts = prefix.before((user_id.clone(), device_id.clone(), since).to_key_bytes());
        for row in self.delivered.scan(cuts, Direction::Forward)? {
            self.delivered.delete(&mut batch, &row?.0);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write(batch)?;
        if let Some(waiting) = self.usage.lock().unwrap_or_else(|p| p.into_inner()).get_mut(device) {
            subtract(waiting, removed);
        }
        Ok(())
    }

    /// Queue removal of a deleted device's waiting messages.
    pub fn remove_device_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        let device = (user_id.to_owned(), device_id.to_owned());
        self.queue.delete_prefix(batch, &device)?;
        self.delivered.delete_prefix(batch, &device)?;
        // Counted again from the queue if the device comes back (or the batch fails).
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
        Ok(())
    }

    /// The device's usage, counted from its queue on first use in this process.
    fn usage_of<'u>(
        &self,
        usage: &'u mut HashMap<DeviceKey, Usage>,
        device: &DeviceKey,
    ) -> Result<&'u mut Usage> {
        if !self.keep_usage || !usage.contains_key(device) {
            let mut counted = Usage::default();
            for row in self.queue.scan_prefix(device, Direction::Forward)? {
                let (_, record) = row?;
                add(&mut counted, Usage { messages: 1, bytes: record.content.get().len() as u64 });
            }
            usage.insert(device.clone(), counted);
        }
        Ok(usage.entry(device.clone()).or_default())
    }
}

/// The rows listed for an appservice at positions after `after` up to `upto`.
fn appservice_range(appservice_id: &str, after: u64, upto: u64) -> KeyRange {
    let id = appservice_id.to_owned();
    let mut range =
        KeyRange::prefix(id.to_key_bytes()).before((id.clone(), upto.saturating_add(1)).to_key_bytes());
    range.start = std::ops::Bound::Included((id, after.saturating_add(1)).to_key_bytes());
    range
}

fn add(usage: &mut Usage, more: Usage) {
    usage.messages = usage.messages.saturating_add(more.messages);
    usage.bytes = usage.bytes.saturating_add(more.bytes);
}

fn subtract(usage: &mut Usage, less: Usage) {
    usage.messages = usage.messages.saturating_sub(less.messages);
    usage.bytes = usage.bytes.saturating_sub(less.bytes);
}

/// A stored message as the event a sync delivers, or why it cannot be: content nested
/// beyond what this server now accepts (stored before the limit existed) would break
/// clients that parse it, as it once broke this server.
fn deliverable(record: &ToDeviceRecord) -> Result<Box<RawJsonValue>, String> {
    if limits::json_too_deep(record.content.get().as_bytes(), MAX_JSON_DEPTH) {
        return Err(format!("content nested more than {MAX_JSON_DEPTH} levels deep"));
    }
    let event = Delivered { sender: &record.sender, kind: &record.kind, content: &record.content };
    serde_json::value::to_raw_value(&event).map_err(|e| e.to_string())
}
