//! To-device messages: queued per recipient device in stream order, delivered by that
//! device's syncs and deleted once it syncs past them, so none is lost across a restart or a
//! dropped response. Owns the `to_device` and `to_device_txns` tables.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        devices::Devices,
        stream::{Change, Stream},
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{TO_DEVICE, TO_DEVICE_TXNS, ToDeviceRecord},
    },
};

/// Messages one device may have waiting; beyond it new ones are refused rather than letting
/// a device that never syncs fill the disk.
const MAX_QUEUED_PER_DEVICE: usize = 100_000;

/// Where a message goes: one device or all (`*`).
pub enum Target {
    Device(OwnedDeviceId),
    AllDevices,
}

pub struct ToDevice {
    queue: Table<(OwnedUserId, OwnedDeviceId, u64), ToDeviceRecord>,
    txns: Table<(OwnedUserId, OwnedDeviceId, String), ()>,
    devices: Arc<Devices>,
    stream: Arc<Stream>,
    store: Arc<dyn KvStore>,
}

impl ToDevice {
    pub fn new(store: &Arc<dyn KvStore>, devices: Arc<Devices>, stream: Arc<Stream>) -> Self {
        Self {
            queue: TO_DEVICE.open(store),
            txns: TO_DEVICE_TXNS.open(store),
            devices,
            stream,
            store: Arc::clone(store),
        }
    }

    /// `PUT /sendToDevice/{eventType}/{txnId}`: queue each message for its devices, once per
    /// sending device and transaction.
    pub fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        kind: &str,
        txn_id: &str,
        messages: BTreeMap<OwnedUserId, Vec<(Target, Box<RawJsonValue>)>>,
    ) -> Result<()> {
        let txn = (sender.to_owned(), sender_device.to_owned(), txn_id.to_owned());
        if self.txns.contains(&txn)? {
            return Ok(());
        }
        let reservation = self.stream.reserve()?;
        let position = reservation.position;
        let mut batch = WriteBatch::new();
        let mut recipients = Vec::new();
        for (user_id, targets) in messages {
            if user_id.server_name() != sender.server_name() {
                // Remote users need federation, which is not here yet.
                continue;
            }
            for (target, content) in targets {
                let devices = match target {
                    Target::Device(device) => vec![device],
                    Target::AllDevices => {
                        self.devices.list(&user_id)?.into_iter().map(|d| d.device_id).collect()
                    }
                };
                for device in devices {
                    let queued = self
                        .queue
                        .scan_prefix(&(user_id.clone(), device.clone()), Direction::Forward)?
                        .count();
                    if queued >= MAX_QUEUED_PER_DEVICE {
                        return Err(Error::new(
                            ruma::api::error::ErrorKind::LimitExceeded(Default::default()),
                            "The recipient device has too many messages waiting",
                        ));
                    }
                    let record = ToDeviceRecord {
                        sender: sender.to_owned(),
                        kind: kind.to_owned(),
                        content: content.clone(),
                    };
                    self.queue.put(&mut batch, &(user_id.clone(), device, position), &record)?;
                }
                recipients.push(user_id.clone());
            }
        }
        self.txns.put(&mut batch, &txn, &())?;
        self.store.write(batch)?;
        drop(reservation);
        recipients.dedup();
        self.stream.announce(position, recipients.into_iter().map(Change::User));
        Ok(())
    }

    /// The device's messages after `since` up to `upto`; messages at or before `since` were
    /// delivered by an earlier sync (the client came back with its token), so they go now.
    pub fn take(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<JsonValue>> {
        let device = (user_id.to_owned(), device_id.to_owned());
        if let Some(since) = since {
            let delivered = KeyRange::prefix(device.to_key_bytes())
                .up_to((user_id.to_owned(), device_id.to_owned(), since).to_key_bytes());
            let mut batch = WriteBatch::new();
            for row in self.queue.scan(delivered, Direction::Forward)? {
                self.queue.delete(&mut batch, &row?.0);
            }
            if !batch.is_empty() {
                self.store.write(batch)?;
            }
        }
        let mut range = KeyRange::prefix(device.to_key_bytes())
            .up_to((user_id.to_owned(), device_id.to_owned(), upto).to_key_bytes());
        if let Some(since) = since {
            range = range.after((user_id.to_owned(), device_id.to_owned(), since).to_key_bytes());
        }
        let mut events = Vec::new();
        for row in self.queue.scan(range, Direction::Forward)? {
            let (_, record) = row?;
            events.push(json!({ "sender": record.sender, "type": record.kind, "content": record.content }));
        }
        Ok(events)
    }

    /// Queue removal of a deleted device's waiting messages.
    pub fn remove_device_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        for row in self.queue.scan_prefix(&(user_id.to_owned(), device_id.to_owned()), Direction::Forward)? {
            self.queue.delete(batch, &row?.0);
        }
        Ok(())
    }
}
