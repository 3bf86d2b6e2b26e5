//! `RemoteE2ee`: end-to-end encryption across servers.
//!
//! - *Serving* other servers: the device and cross-signing keys of local users
//!   (`/user/keys/query`), one-time keys (`/user/keys/claim`) and device lists
//!   (`/user/devices/{userId}`).
//! - *Asking* other servers: a client's `/keys/query` and `/keys/claim` naming users of
//!   other servers go to those servers, all within `REMOTE_KEYS_LIMIT`; a server that does
//!   not answer in time, or refuses, is listed in `failures` and the rest is answered.
//! - *To-device messages*: those for users of another server leave as `m.direct_to_device`
//!   EDUs through the sender's EDU path; those arriving so are queued for local devices.
//! - *Device lists*: a change of a local user's devices or cross-signing keys goes to every
//!   server sharing a room with them as `m.device_list_update` EDUs (one per device, which
//!   a server that tracks nothing resyncs from `/user/devices`); an update or
//!   `m.signing_key_update` from another server marks its user changed, so the syncs of local
//!   users sharing a room with them list the user in `device_lists.changed` and their clients
//!   query the keys again (this server keeps no copy of remote keys: queries go to the user's
//!   server each time).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Weak},
    time::Duration,
};

use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId, events::room::member::MembershipState,
};
use serde_json::{Map, Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{FederationClient, FederationSender};
use crate::{
    Error, Result,
    service::{
        devices::Devices,
        keys::{ClaimedKeys, Keys, QueryResult},
        rooms::members::Memberships,
        stream::{Change, Heard, Stream},
        to_device::{Target, ToDevice},
    },
};

/// How long a client's key query or claim waits for other servers, in all.
const REMOTE_KEYS_LIMIT: Duration = Duration::from_secs(10);

/// Servers that could not answer a key query or claim, with why (`failures`).
pub type Failures = BTreeMap<String, JsonValue>;

/// A local user's device list as another server gets it.
pub struct DeviceList {
    pub stream_id: u64,
    /// Each device with its keys and display name.
    pub devices: Vec<(OwnedDeviceId, JsonValue, Option<String>)>,
    pub master_key: Option<JsonValue>,
    pub self_signing_key: Option<JsonValue>,
}

pub struct RemoteE2ee {
    server_name: OwnedServerName,
    client: Arc<FederationClient>,
    sender: Arc<FederationSender>,
    keys: Arc<Keys>,
    devices: Arc<Devices>,
    members: Arc<Memberships>,
    to_device: Arc<ToDevice>,
    stream: Arc<Stream>,
}

impl RemoteE2ee {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        client: Arc<FederationClient>,
        sender: Arc<FederationSender>,
        keys: Arc<Keys>,
        devices: Arc<Devices>,
        members: Arc<Memberships>,
        to_device: Arc<ToDevice>,
        stream: Arc<Stream>,
    ) -> Self {
        Self { server_name, client, sender, keys, devices, members, to_device, stream }
    }

    fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    fn display_name(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Option<String> {
        self.devices.get(user_id, device_id).ok().flatten().and_then(|d| d.display_name)
    }

    // ----- serving other servers -----

    /// `/user/keys/query` from `origin`: the keys of the local users asked for (a user's
    /// user-signing key is nobody else's, so never sent).
    pub fn serve_query(
        &self,
        origin: &ServerName,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<QueryResult> {
        let local: BTreeMap<_, _> = wanted
            .iter()
            .filter(|(user, _)| self.is_local(user))
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        let asker = UserId::parse(format!("@_conduit_federation:{origin}"))
            .map_err(|e| Error::internal(format!("asker of {origin}: {e}")))?;
        self.keys.query(&asker, &local, |user, device| self.display_name(user, device))
    }

    /// `/user/keys/claim`: one-time keys of local users' devices.
    pub fn serve_claim(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<ClaimedKeys> {
        let local: BTreeMap<_, _> = wanted
            .iter()
            .filter(|(user, _)| self.is_local(user))
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        self.keys.claim(&local)
    }

    /// `/user/devices/{userId}`: a local user's devices with their keys and names, the
    /// position of their list's latest change, and their cross-signing keys.
    pub fn serve_devices(&self, user_id: &UserId) -> Result<DeviceList> {
        if !self.is_local(user_id) {
            return Err(Error::not_found(format!("{user_id} is not a user of this server")));
        }
        let mut devices = Vec::new();
        for device in self.devices.list(user_id)? {
            let Some(keys) = self.keys.device_keys(user_id, &device.device_id)? else { continue };
            devices.push((device.device_id, keys, device.display_name));
        }
        Ok(DeviceList {
            stream_id: self.stream.committed(),
            devices,
            master_key: self.keys.cross_signing_key(user_id, "master")?,
            self_signing_key: self.keys.cross_signing_key(user_id, "self_signing")?,
        })
    }

    // ----- a client's queries and claims -----

    /// `/keys/query`: local users from the store, other servers' users from their servers.
    pub async fn query(
        &self,
        requester: &UserId,
        wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<(QueryResult, Failures)> {
        let (local, remote) = self.split(wanted);
        let mut result =
            self.keys.query(requester, &local, |user, device| self.display_name(user, device))?;
        let mut failures = Failures::new();
        let deadline = tokio::time::Instant::now() + REMOTE_KEYS_LIMIT;
        for (server, users) in remote {
            let body = json!({"device_keys": users});
            let answer = self.ask(&server, "/_matrix/federation/v1/user/keys/query", body, deadline).await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(failure) => {
                    failures.insert(server.to_string(), failure);
                    continue;
                }
            };
            let from_server = |user: &str| UserId::parse(user).ok().filter(|u| u.server_name() == server);
            if let Some(users) = answer.get("device_keys").and_then(JsonValue::as_object) {
                for (user, devices) in users {
                    let (Some(user), Some(devices)) = (from_server(user), devices.as_object()) else {
                        continue;
                    };
                    let entry = result.device_keys.entry(user).or_default();
                    for (device, keys) in devices {
                        entry.insert(OwnedDeviceId::from(device.as_str()), keys.clone());
                    }
                }
            }
            for (field, target) in [
                ("master_keys", &mut result.master_keys),
                ("self_signing_keys", &mut result.self_signing_keys),
            ] {
                for (user, key) in answer.get(field).and_then(JsonValue::as_object).into_iter().flatten() {
                    if let Some(user) = from_server(user) {
                        target.insert(user, key.clone());
                    }
                }
            }
        }
        Ok((result, failures))
    }

    /// `/keys/claim`: local devices' keys from the store, other servers' from them.
    pub async fn claim(
        &self,
        wanted: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<(ClaimedKeys, Failures)> {
        let (local, remote) = self.split(wanted);
        let mut claimed = self.keys.claim(&local)?;
        let mut failures = Failures::new();
        let deadline = tokio::time::Instant::now() + REMOTE_KEYS_LIMIT;
        for (server, users) in remote {
            let body = json!({"one_time_keys": users});
            let answer =
                match self.ask(&server, "/_matrix/federation/v1/user/keys/claim", body, deadline).await {
                    Ok(answer) => answer,
                    Err(failure) => {
                        failures.insert(server.to_string(), failure);
                        continue;
                    }
                };
            for (user, devices) in
                answer.get("one_time_keys").and_then(JsonValue::as_object).into_iter().flatten()
            {
                let Some(user) = UserId::parse(user).ok().filter(|u| u.server_name() == server) else {
                    continue;
                };
                let Some(devices) = devices.as_object() else { continue };
                for (device, keys) in devices {
                    let Some(keys) = keys.as_object() else { continue };
                    let device = OwnedDeviceId::from(device.as_str());
                    let entry = claimed.entry(user.clone()).or_default().entry(device).or_default();
                    for (key_id, key) in keys {
                        entry.insert(key_id.clone(), key.clone());
                    }
                }
            }
        }
        Ok((claimed, failures))
    }

    /// Split a request by user into the local part and the other servers' parts.
    fn split<T>(
        &self,
        wanted: BTreeMap<OwnedUserId, T>,
    ) -> (BTreeMap<OwnedUserId, T>, BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>) {
        let mut local = BTreeMap::new();
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
        for (user, value) in wanted {
            if self.is_local(&user) {
                local.insert(user, value);
            } else {
                remote.entry(user.server_name().to_owned()).or_default().insert(user, value);
            }
        }
        (local, remote)
    }

    /// POST `body` to `server` before `deadline`; a failure as the `failures` entry.
    async fn ask(
        &self,
        server: &ServerName,
        path: &str,
        body: JsonValue,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<JsonValue, JsonValue> {
        if !self.client.enabled() {
            return Err(json!({"status": 503, "message": "Federation is disabled"}));
        }
        let request = self.client.request(server, http::Method::POST, path, Some(&body), true);
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(refusal))) => Err(json!({"status": refusal.status, "message": refusal.body})),
            Ok(Err(e)) => Err(json!({"status": 503, "message": e.to_string()})),
            Err(_) => Err(json!({"status": 504, "message": format!("{server} did not answer in time")})),
        }
    }

    // ----- to-device messages -----

    /// `PUT /sendToDevice`: local recipients' messages queued here, other servers' sent to
    /// them as `m.direct_to_device` EDUs (one per server, with the transaction's ID as the
    /// message ID; dropped with federation off).
    pub fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &ruma::DeviceId,
        kind: &str,
        txn_id: &str,
        messages: BTreeMap<OwnedUserId, Vec<(Target, Box<RawJsonValue>)>>,
    ) -> Result<()> {
        let (local, remote) = self.split(messages);
        self.to_device.send(sender, sender_device, kind, txn_id, local)?;
        if remote.is_empty() {
            return Ok(());
        }
        if !self.client.enabled() {
            // Nowhere to send them; the spec's answer is still 200.
            tracing::debug!(%sender, "to-device messages for other servers dropped: federation is off");
            return Ok(());
        }
        for (server, users) in remote {
            let mut per_user = Map::new();
            for (user, targets) in users {
                let mut per_device = Map::new();
                for (target, content) in targets {
                    let device = match target {
                        Target::Device(device) => device.to_string(),
                        Target::AllDevices => "*".to_owned(),
                    };
                    let content: JsonValue = serde_json::from_str(content.get())
                        .map_err(|e| Error::bad_json(format!("to-device content: {e}")))?;
                    per_device.insert(device, content);
                }
                per_user.insert(user.to_string(), JsonValue::Object(per_device));
            }
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": kind,
                    "message_id": format!("{sender_device}-{txn_id}"),
                    "messages": per_user,
                },
            });
            self.sender.queue_edu(&server, edu)?;
        }
        Ok(())
    }

    /// An `m.direct_to_device` EDU from `origin`: its messages queued for local devices.
    pub fn receive_to_device(&self, origin: &ServerName, content: &JsonValue) -> Result<()> {
        let sender = content["sender"].as_str().and_then(|s| UserId::parse(s).ok());
        let (Some(sender), Some(kind), Some(message_id), Some(users)) = (
            sender.filter(|s| s.server_name() == origin),
            content["type"].as_str(),
            content["message_id"].as_str(),
            content["messages"].as_object(),
        ) else {
            return Err(Error::bad_json("a malformed m.direct_to_device EDU"));
        };
        let mut messages: BTreeMap<OwnedUserId, Vec<(Target, Box<RawJsonValue>)>> = BTreeMap::new();
        for (user, devices) in users {
            let Some(user) = UserId::parse(user).ok().filter(|u| self.is_local(u)) else { continue };
            let Some(devices) = devices.as_object() else { continue };
            for (device, body) in devices {
                let target = match device.as_str() {
                    "*" => Target::AllDevices,
                    id => Target::Device(OwnedDeviceId::from(id)),
                };
                let Ok(body) = serde_json::value::to_raw_value(body) else { continue };
                messages.entry(user.clone()).or_default().push((target, body));
            }
        }
        // Messages of one sending server are told apart by their message ID.
        let device = OwnedDeviceId::from(format!("{origin} (federation)"));
        self.to_device.send(&sender, &device, kind, message_id, messages)
    }

    // ----- device lists -----

    /// A device-list EDU (`m.device_list_update`, `m.signing_key_update`) from `origin`
    /// about one of its users: the user's keys are marked changed.
    pub fn receive_device_change(&self, origin: &ServerName, content: &JsonValue) -> Result<()> {
        let user = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok());
        let Some(user) = user.filter(|u| u.server_name() == origin) else {
            return Err(Error::bad_json("a device-list EDU naming no user of its server"));
        };
        self.keys.device_list_changed(&user)
    }

    /// Follow the stream: a device-list change of a local user is sent to the servers
    /// sharing a room with them (started with federation on).
    pub fn start(self: &Arc<Self>) {
        if !self.client.enabled() {
            return;
        }
        let mut listener = self.stream.listen();
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match listener.next().await {
                    Heard::Change(announced) => {
                        let Change::RoomMates(user) = &announced.change else { continue };
                        let Some(me) = me.upgrade() else { return };
                        if !me.is_local(user) {
                            continue;
                        }
                        listener.committed_to(announced.position).await;
                        if let Err(e) = me.device_list_changed(user, announced.position) {
                            tracing::warn!(%user, error = %e, "device list update not sent");
                        }
                    }
                    Heard::Missed => {}
                    Heard::Closed => return,
                }
            }
        });
    }

    /// If the change at `position` was `user_id`'s device list, tell the servers sharing a
    /// room with them.
    fn device_list_changed(&self, user_id: &UserId, position: u64) -> Result<()> {
        let changed = self.keys.changes_between(position.saturating_sub(1), position)?;
        if !changed.iter().any(|(_, user)| user == user_id) {
            return Ok(());
        }
        let mut servers = BTreeSet::new();
        for room in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            for member in self.members.members_with(&room, &MembershipState::Join)? {
                if member.server_name() != self.server_name {
                    servers.insert(member.server_name().to_owned());
                }
            }
        }
        if servers.is_empty() {
            return Ok(());
        }
        let devices = self.devices.list(user_id)?;
        let mut edus = Vec::new();
        for device in &devices {
            let mut content = json!({
                "user_id": user_id,
                "device_id": device.device_id,
                "stream_id": position,
                "prev_id": [],
                "deleted": false,
            });
            if let Some(keys) = self.keys.device_keys(user_id, &device.device_id)? {
                content["keys"] = keys;
            }
            if let Some(name) = &device.display_name {
                content["device_display_name"] = name.as_str().into();
            }
            edus.push(json!({"edu_type": "m.device_list_update", "content": content}));
        }
        for server in servers {
            for edu in &edus {
                self.sender.queue_edu(&server, edu.clone())?;
            }
        }
        Ok(())
    }
}
