//! `RemoteE2ee`: end-to-end encryption across servers.
//!
//! - *Serving* other servers: the device and cross-signing keys of local users
//!   (`/user/keys/query`), one-time keys (`/user/keys/claim`) and device lists
//!   (`/user/devices/{userId}`).
//! - *Asking* other servers: a client's `/keys/query` and `/keys/claim` naming users of
//!   other servers go to those servers, all within `REMOTE_KEYS_LIMIT`; a server that does
//!   not answer in time, or refuses, is listed in `failures` and the rest is answered. A
//!   query for a user sharing a room with a local user is answered from the cached copy of
//!   their device list (fetched with `/user/devices` first when none is held or it is stale).
//! - *To-device messages*: those for users of another server leave as durable
//!   `m.direct_to_device` EDUs (`FederationSender::queue_edu`); those arriving so are queued
//!   for local devices.
//! - *Device lists out*: a change of a local user's devices or cross-signing keys goes to
//!   every server sharing a room with them: an `m.device_list_update` per device added,
//!   changed or deleted since the list was last sent, whose `prev_id` names the last change
//!   sent (none the first time, which makes the receiver fetch the whole list), and an
//!   `m.signing_key_update` when the master or self-signing key changed. `device_lists_sent`
//!   holds what was last sent; `/user/devices` answers its stream ID.
//! - *Device lists in*: for a user sharing a room with a local user, an update that follows
//!   on from the cached list (its `prev_id`s were seen) is applied to it; one after a gap
//!   marks it stale and the list is fetched again in the background. Either way the user is
//!   marked changed, so local room mates' syncs list them in `device_lists.changed`. EDUs
//!   are checked first: a user of another server than the sender, or keys of another user
//!   or device, are refused and change nothing. Once a user shares no room with a local
//!   user (either leaves: `Memberships::departures`), their copy is forgotten, since their
//!   server stops sending updates; a later query fetches it afresh.
//!
//! Owns the `remote_device_lists` and `device_lists_sent` tables.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    events::room::member::MembershipState,
};
use serde_json::{Map, Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{FederationClient, FederationSender, client::refusal_error};
use crate::{
    Error, Result,
    service::{
        devices::Devices,
        keys::{ClaimedKeys, Keys, QueryResult},
        rooms::members::Memberships,
        stream::{Change, Heard, Stream},
        to_device::{Target, ToDevice},
    },
    storage::{
        KvStore, Table,
        tables::{DEVICE_LISTS_SENT, DeviceListSentRecord, REMOTE_DEVICE_LISTS, RemoteDeviceListRecord},
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
    remote_lists: Table<OwnedUserId, RemoteDeviceListRecord>,
    sent: Table<OwnedUserId, DeviceListSentRecord>,
    /// Serialises the read-modify-writes of cached remote lists.
    lists_lock: Mutex<()>,
    /// Users whose list is being fetched again.
    resyncing: Mutex<HashSet<OwnedUserId>>,
    me: Mutex<Weak<Self>>,
}

impl RemoteE2ee {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        server_name: OwnedServerName,
        client: Arc<FederationClient>,
        sender: Arc<FederationSender>,
        keys: Arc<Keys>,
        devices: Arc<Devices>,
        members: Arc<Memberships>,
        to_device: Arc<ToDevice>,
        stream: Arc<Stream>,
    ) -> Self {
        Self {
            server_name,
            client,
            sender,
            keys,
            devices,
            members,
            to_device,
            stream,
            remote_lists: REMOTE_DEVICE_LISTS.open(store),
            sent: DEVICE_LISTS_SENT.open(store),
            lists_lock: Mutex::new(()),
            resyncing: Mutex::new(HashSet::new()),
            me: Mutex::new(Weak::new()),
        }
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
        // The stream ID of the change last sent: the next update names it as its prev_id.
        let stream_id = self.sent.get(&user_id.to_owned())?.map_or(0, |sent| sent.stream_id);
        Ok(DeviceList {
            stream_id,
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
            // Users sharing a room with a local user are answered from their cached lists.
            let mut ask = BTreeMap::new();
            for (user, devices) in users {
                match self.tracked_list(&user, deadline).await? {
                    Some(list) => answer_from_cache(&mut result, &user, &devices, &list),
                    None => {
                        ask.insert(user, devices);
                    }
                }
            }
            if ask.is_empty() {
                continue;
            }
            let body = json!({"device_keys": ask});
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

    // ----- device lists: other servers' users -----

    /// Whether a user shares a room with a local user (whose device list this server then
    /// tracks).
    fn shares_room_with_local(&self, user_id: &UserId) -> Result<bool> {
        for room in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            if self.members.roster(&room)?.joined().iter().any(|u| self.is_local(u)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn lock_lists(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lists_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An `m.device_list_update` EDU from `origin`. Checked first (a user of `origin`, its
    /// keys of that user and device): anything else is refused and changes nothing. For a
    /// user sharing a room with a local user, the update is applied to the cached list when
    /// it follows on from what the cache holds (its `prev_id`s were all seen); otherwise
    /// the cache is marked stale and the list fetched again (`/user/devices`). Local room
    /// mates' syncs then list the user as changed.
    pub fn receive_device_list_update(&self, origin: &ServerName, content: &JsonValue) -> Result<()> {
        let update = DeviceUpdate::parse(origin, content)?;
        if !self.shares_room_with_local(&update.user_id)? {
            return Ok(());
        }
        let applied = {
            let _guard = self.lock_lists();
            match self.remote_lists.get(&update.user_id)? {
                Some(record) if !record.stale && update.stream_id < record.stream_id => {
                    // Older than what is held: seen already.
                    return Ok(());
                }
                Some(mut record)
                    if !record.stale
                        && !update.prev_ids.is_empty()
                        && update.prev_ids.iter().all(|p| record.recent.contains(p)) =>
                {
                    if update.deleted {
                        record.devices.remove(&update.device_id);
                    } else if let Some(mut keys) = update.keys {
                        if let Some(name) = &update.display_name {
                            keys["unsigned"] = json!({"device_display_name": name});
                        }
                        record.devices.insert(update.device_id.clone(), keys.to_string());
                    }
                    record.stream_id = update.stream_id;
                    remember(&mut record.recent, update.stream_id);
                    self.remote_lists.insert(&update.user_id, &record)?;
                    true
                }
                Some(mut record) => {
                    record.stale = true;
                    self.remote_lists.insert(&update.user_id, &record)?;
                    false
                }
                None => false,
            }
        };
        if !applied {
            self.resync_later(&update.user_id);
        }
        self.keys.device_list_changed(&update.user_id)
    }

    /// An `m.signing_key_update` EDU from `origin`: the user's new master and self-signing
    /// keys, each checked to be the user's, replace the cached ones.
    pub fn receive_signing_key_update(&self, origin: &ServerName, content: &JsonValue) -> Result<()> {
        let user = content.get("user_id").and_then(JsonValue::as_str).and_then(|u| UserId::parse(u).ok());
        let Some(user) = user.filter(|u| u.server_name() == origin) else {
            return Err(Error::bad_json("an m.signing_key_update EDU naming no user of its server"));
        };
        let master = cross_signing_key_of(&user, content.get("master_key"), "master")?;
        let self_signing = cross_signing_key_of(&user, content.get("self_signing_key"), "self_signing")?;
        if master.is_none() && self_signing.is_none() {
            return Err(Error::bad_json("an m.signing_key_update EDU with no key"));
        }
        if !self.shares_room_with_local(&user)? {
            return Ok(());
        }
        let held = {
            let _guard = self.lock_lists();
            match self.remote_lists.get(&user)? {
                Some(mut record) if !record.stale => {
                    if let Some(master) = master {
                        record.master_key = Some(master.to_string());
                    }
                    if let Some(self_signing) = self_signing {
                        record.self_signing_key = Some(self_signing.to_string());
                    }
                    self.remote_lists.insert(&user, &record)?;
                    true
                }
                _ => false,
            }
        };
        if !held {
            self.resync_later(&user);
        }
        self.keys.device_list_changed(&user)
    }

    /// Fetch a user's device list again in the background (once at a time per user).
    fn resync_later(&self, user_id: &UserId) {
        if !self.resyncing.lock().unwrap_or_else(|p| p.into_inner()).insert(user_id.to_owned()) {
            return;
        }
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let user = user_id.to_owned();
        tokio::spawn(async move {
            let Some(me) = me.upgrade() else { return };
            match tokio::time::timeout(REMOTE_KEYS_LIMIT, me.resync(&user)).await {
                Ok(Ok(())) => {
                    if let Err(e) = me.keys.device_list_changed(&user) {
                        tracing::warn!(%user, error = %e, "marking a resynced device list changed failed");
                    }
                }
                Ok(Err(e)) => tracing::info!(%user, error = %e, "device list resync failed"),
                Err(_) => tracing::info!(%user, "device list resync timed out"),
            }
            me.resyncing.lock().unwrap_or_else(|p| p.into_inner()).remove(&user);
        });
    }

    /// `GET /user/devices/{userId}` of the user's server, checked, into the cache.
    async fn resync(&self, user_id: &UserId) -> Result<()> {
        if !self.client.enabled() {
            return Err(Error::Upstream("Federation is disabled".to_owned()));
        }
        let server = user_id.server_name();
        let encoded: String = url::form_urlencoded::byte_serialize(user_id.as_str().as_bytes()).collect();
        let path = format!("/_matrix/federation/v1/user/devices/{encoded}");
        let answer = match self.client.request(server, http::Method::GET, &path, None, true).await? {
            Ok(answer) => answer,
            Err(refusal) => return Err(refusal_error(server, &refusal)),
        };
        let fetched = parse_device_list(user_id, &answer)?;
        let _guard = self.lock_lists();
        // They stopped sharing a room with local users meanwhile: nothing keeps it current.
        if !self.shares_room_with_local(user_id)? {
            return Ok(());
        }
        // An update applied meanwhile, newer than the answer, is kept.
        if let Some(held) = self.remote_lists.get(&user_id.to_owned())?
            && !held.stale
            && held.stream_id > fetched.stream_id
        {
            return Ok(());
        }
        self.remote_lists.insert(&user_id.to_owned(), &fetched)?;
        Ok(())
    }

    /// The cached device list of a remote user sharing a room with a local user, fetched
    /// first (before `deadline`) when none is held or it is stale. `None` for a user not
    /// tracked, or whose list could not be fetched.
    async fn tracked_list(
        &self,
        user_id: &UserId,
        deadline: tokio::time::Instant,
    ) -> Result<Option<RemoteDeviceListRecord>> {
        if !self.shares_room_with_local(user_id)? {
            return Ok(None);
        }
        if let Some(record) = self.remote_lists.get(&user_id.to_owned())?
            && !record.stale
        {
            return Ok(Some(record));
        }
        match tokio::time::timeout_at(deadline, self.resync(user_id)).await {
            Ok(Ok(())) => Ok(self.remote_lists.get(&user_id.to_owned())?.filter(|r| !r.stale)),
            Ok(Err(e)) => {
                tracing::info!(%user_id, error = %e, "device list fetch failed");
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    /// Forget the cached lists of `users` who no longer share a room with a local user: their
    /// servers stop sending updates, so a copy kept would go stale unseen. Should they share
    /// a room again, the first query fetches the list afresh.
    fn forget_untracked(&self, users: impl IntoIterator<Item = OwnedUserId>) -> Result<usize> {
        let mut forgotten = 0;
        for user in users {
            let _guard = self.lock_lists();
            if self.remote_lists.get(&user)?.is_some() && !self.shares_room_with_local(&user)? {
                self.remote_lists.remove(&user)?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Every user whose list is cached (after missing departures, and at start).
    fn cached_users(&self) -> Result<Vec<OwnedUserId>> {
        let mut users = Vec::new();
        for row in
            self.remote_lists.scan(crate::storage::kv::KeyRange::all(), crate::storage::Direction::Forward)?
        {
            users.push(row?.0);
        }
        Ok(users)
    }

    /// A membership change away from `join` in `room_id`: a remote user who left may no
    /// longer share a room with a local user; a local user who left may leave the room's
    /// remote members sharing none.
    fn departed(&self, room_id: &RoomId, user_id: &UserId) -> Result<usize> {
        if !self.is_local(user_id) {
            return self.forget_untracked([user_id.to_owned()]);
        }
        let remote: Vec<OwnedUserId> =
            self.members.roster(room_id)?.joined().iter().filter(|u| !self.is_local(u)).cloned().collect();
        self.forget_untracked(remote)
    }

    /// Follow membership departures, forgetting the lists of users no longer tracked.
    fn follow_departures(self: &Arc<Self>) {
        let mut departures = self.members.departures();
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut sweep = true;
            loop {
                let Some(e2ee) = me.upgrade() else { return };
                let done = if sweep {
                    e2ee.cached_users().and_then(|users| e2ee.forget_untracked(users))
                } else {
                    Ok(0)
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "forgetting untracked device lists failed");
                }
                drop(e2ee);
                sweep = false;
                match departures.recv().await {
                    Ok((room, user)) => {
                        let Some(e2ee) = me.upgrade() else { return };
                        if let Err(e) = e2ee.departed(&room, &user) {
                            tracing::warn!(%room, %user, error = %e, "forgetting untracked device lists failed");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => sweep = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// The cached device list of a remote user, without fetching (for tests and the admin).
    pub fn cached_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceListRecord>> {
        Ok(self.remote_lists.get(&user_id.to_owned())?)
    }

    // ----- device lists: local users -----

    /// Follow the stream: a device-list change of a local user is sent to the servers
    /// sharing a room with them (started with federation on).
    pub fn start(self: &Arc<Self>) {
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(self);
        if !self.client.enabled() {
            return;
        }
        self.follow_departures();
        // Every process's changes, acted on by the one that delivers (the leader).
        let mut listener = self.stream.listen();
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match listener.next().await {
                    Heard::Change(announced) => {
                        let Change::RoomMates(user) = &announced.change else { continue };
                        let Some(me) = me.upgrade() else { return };
                        if !me.is_local(user) || !me.sender.is_leading() {
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
    /// room with them what changed since the list was last sent: an `m.device_list_update`
    /// per device added, changed or deleted (each naming the last change sent as its
    /// `prev_id`, none the first time, which makes the receiver fetch the whole list), and an
    /// `m.signing_key_update` when the master or self-signing key changed.
    fn device_list_changed(&self, user_id: &UserId, position: u64) -> Result<()> {
        let changed = self.keys.changes_between(position.saturating_sub(1), position)?;
        if !changed.iter().any(|(_, user)| user == user_id) {
            return Ok(());
        }
        let asker = UserId::parse(format!("@_conduit_federation:{}", self.server_name))
            .map_err(|e| Error::internal(format!("asker of {}: {e}", self.server_name)))?;
        let wanted = BTreeMap::from([(user_id.to_owned(), Vec::new())]);
        let mut now = self.keys.query(&asker, &wanted, |user, device| self.display_name(user, device))?;
        let devices: BTreeMap<String, String> = now
            .device_keys
            .remove(user_id)
            .unwrap_or_default()
            .into_iter()
            .map(|(device, keys)| (device.to_string(), keys.to_string()))
            .collect();
        let master = now.master_keys.remove(user_id);
        let self_signing = now.self_signing_keys.remove(user_id);
        let before = self.sent.get(&user_id.to_owned())?;
        let prev_id: Vec<u64> = before.iter().map(|b| b.stream_id).collect();
        let before = before.unwrap_or_default();
        let mut edus = Vec::new();
        for (device, keys) in &devices {
            if before.devices.get(device) == Some(keys) {
                continue;
            }
            let mut keys: JsonValue =
                serde_json::from_str(keys).map_err(|e| Error::internal(e.to_string()))?;
            let name = keys["unsigned"]["device_display_name"].as_str().map(str::to_owned);
            if let Some(object) = keys.as_object_mut() {
                object.remove("unsigned");
            }
            let mut content = json!({
                "user_id": user_id, "device_id": device, "stream_id": position,
                "prev_id": prev_id, "deleted": false, "keys": keys,
            });
            if let Some(name) = name {
                content["device_display_name"] = name.into();
            }
            edus.push(json!({"edu_type": "m.device_list_update", "content": content}));
        }
        for device in before.devices.keys().filter(|d| !devices.contains_key(*d)) {
            edus.push(json!({"edu_type": "m.device_list_update", "content": {
                "user_id": user_id, "device_id": device, "stream_id": position,
                "prev_id": prev_id, "deleted": true,
            }}));
        }
        let as_text = |key: &Option<JsonValue>| key.as_ref().map(JsonValue::to_string);
        if as_text(&master) != before.master_key || as_text(&self_signing) != before.self_signing_key {
            let mut content = json!({"user_id": user_id});
            if let Some(master) = &master {
                content["master_key"] = master.clone();
            }
            if let Some(self_signing) = &self_signing {
                content["self_signing_key"] = self_signing.clone();
            }
            edus.push(json!({"edu_type": "m.signing_key_update", "content": content}));
        }
        // Nothing other servers see changed (a device without keys, a signature on another
        // user's key): nothing is sent, and the next update follows on from the last one sent.
        if edus.is_empty() {
            return Ok(());
        }
        self.sent.insert(
            &user_id.to_owned(),
            &DeviceListSentRecord {
                stream_id: position,
                devices,
                master_key: as_text(&master),
                self_signing_key: as_text(&self_signing),
            },
        )?;
        let mut servers = BTreeSet::new();
        for room in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            for member in self.members.roster(&room)?.joined() {
                if member.server_name() != self.server_name {
                    servers.insert(member.server_name().to_owned());
                }
            }
        }
        for server in servers {
            self.sender.queue_edus(&server, &edus)?;
        }
        Ok(())
    }
}

/// Fill a key query's answer for `user_id` from their cached list (only `devices` when any
/// are named).
fn answer_from_cache(
    result: &mut QueryResult,
    user_id: &UserId,
    devices: &[OwnedDeviceId],
    list: &RemoteDeviceListRecord,
) {
    let entry = result.device_keys.entry(user_id.to_owned()).or_default();
    for (device, keys) in &list.devices {
        if !devices.is_empty() && !devices.iter().any(|d| d.as_str() == device) {
            continue;
        }
        if let Ok(keys) = serde_json::from_str(keys) {
            entry.insert(OwnedDeviceId::from(device.as_str()), keys);
        }
    }
    let parse = |key: &Option<String>| key.as_deref().and_then(|k| serde_json::from_str(k).ok());
    if let Some(master) = parse(&list.master_key) {
        result.master_keys.insert(user_id.to_owned(), master);
    }
    if let Some(self_signing) = parse(&list.self_signing_key) {
        result.self_signing_keys.insert(user_id.to_owned(), self_signing);
    }
}

/// How many recent stream IDs of a remote list are remembered.
const RECENT_STREAM_IDS: usize = 10;

fn remember(recent: &mut Vec<u64>, stream_id: u64) {
    if !recent.contains(&stream_id) {
        recent.push(stream_id);
    }
    let excess = recent.len().saturating_sub(RECENT_STREAM_IDS);
    recent.drain(..excess);
}

/// One `m.device_list_update` EDU's content, checked.
struct DeviceUpdate {
    user_id: OwnedUserId,
    device_id: String,
    stream_id: u64,
    prev_ids: Vec<u64>,
    deleted: bool,
    keys: Option<JsonValue>,
    display_name: Option<String>,
}

impl DeviceUpdate {
    fn parse(origin: &ServerName, content: &JsonValue) -> Result<Self> {
        let bad = |why: &str| Error::bad_json(format!("a malformed m.device_list_update EDU: {why}"));
        let user_id = content.get("user_id").and_then(JsonValue::as_str).and_then(|u| UserId::parse(u).ok());
        let Some(user_id) = user_id.filter(|u| u.server_name() == origin) else {
            return Err(bad("it names no user of its server"));
        };
        let device_id = match content.get("device_id").and_then(JsonValue::as_str) {
            Some(device) if !device.is_empty() => device.to_owned(),
            _ => return Err(bad("no device_id")),
        };
        let Some(stream_id) = content.get("stream_id").and_then(JsonValue::as_u64) else {
            return Err(bad("no stream_id"));
        };
        let prev_ids = match content.get("prev_id") {
            None | Some(JsonValue::Null) => Vec::new(),
            Some(JsonValue::Array(ids)) => ids
                .iter()
                .map(JsonValue::as_u64)
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| bad("a prev_id that is not a number"))?,
            Some(_) => return Err(bad("prev_id is not a list")),
        };
        let deleted = match content.get("deleted") {
            None | Some(JsonValue::Null) => false,
            Some(JsonValue::Bool(deleted)) => *deleted,
            Some(_) => return Err(bad("deleted is not a boolean")),
        };
        let keys = match content.get("keys") {
            None | Some(JsonValue::Null) => None,
            Some(keys) => {
                if keys.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str())
                    || keys.get("device_id").and_then(JsonValue::as_str) != Some(device_id.as_str())
                    || !keys.get("keys").is_some_and(JsonValue::is_object)
                {
                    return Err(bad("keys that are not this user's device's"));
                }
                Some(keys.clone())
            }
        };
        let display_name = match content.get("device_display_name") {
            None | Some(JsonValue::Null) => None,
            Some(JsonValue::String(name)) => Some(name.clone()),
            Some(_) => return Err(bad("device_display_name is not a string")),
        };
        Ok(Self { user_id, device_id, stream_id, prev_ids, deleted, keys, display_name })
    }
}

/// A cross-signing key of `user_id` in a remote answer, when present: refused unless it is
/// the user's and has the usage.
fn cross_signing_key_of(user_id: &UserId, key: Option<&JsonValue>, usage: &str) -> Result<Option<JsonValue>> {
    let Some(key) = key.filter(|k| !k.is_null()) else { return Ok(None) };
    let usages = key.get("usage").and_then(JsonValue::as_array);
    if key.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str())
        || !usages.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage)))
        || !key.get("keys").is_some_and(JsonValue::is_object)
    {
        return Err(Error::bad_json(format!("a {usage} key that is not {user_id}'s")));
    }
    Ok(Some(key.clone()))
}

/// A `/user/devices/{userId}` answer, checked: devices whose keys are not the user's
/// device's are left out; a wrong user or a missing stream ID refuses the answer.
fn parse_device_list(user_id: &UserId, answer: &JsonValue) -> Result<RemoteDeviceListRecord> {
    let server = user_id.server_name();
    if answer.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str()) {
        return Err(Error::Upstream(format!("{server} answered the device list of another user")));
    }
    let Some(stream_id) = answer.get("stream_id").and_then(JsonValue::as_u64) else {
        return Err(Error::Upstream(format!("{server} answered a device list without a stream_id")));
    };
    let mut devices = BTreeMap::new();
    for device in answer.get("devices").and_then(JsonValue::as_array).into_iter().flatten() {
        let Some(device_id) = device.get("device_id").and_then(JsonValue::as_str) else { continue };
        let Some(keys) = device.get("keys") else { continue };
        if keys.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str())
            || keys.get("device_id").and_then(JsonValue::as_str) != Some(device_id)
        {
            continue;
        }
        let mut keys = keys.clone();
        if let Some(name) = device.get("device_display_name").and_then(JsonValue::as_str) {
            keys["unsigned"] = json!({"device_display_name": name});
        }
        devices.insert(device_id.to_owned(), keys.to_string());
    }
    let key = |field: &str, usage: &str| {
        cross_signing_key_of(user_id, answer.get(field), usage).ok().flatten().map(|k| k.to_string())
    };
    Ok(RemoteDeviceListRecord {
        stream_id,
        recent: vec![stream_id],
        stale: false,
        devices,
        master_key: key("master_key", "master"),
        self_signing_key: key("self_signing_key", "self_signing"),
    })
}
