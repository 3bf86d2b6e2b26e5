//! The admin API's flows over users (Synapse's `/_synapse/admin` users, devices and server
//! notices), at the top of the service graph: each admin action is one method here, which
//! checks the target (local, existing) and calls the services that own the data. Owns the
//! `server_notice_rooms` table: each user's server notices room.

use std::{cmp::Ordering, sync::Arc};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedMxcUri, OwnedRoomId, OwnedUserId, UserId,
    api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
    events::room::member::MembershipState,
    serde::Raw,
};
use serde_json::{Map as JsonMap, Value as JsonValue, json};

use super::{
    account_data::AccountData,
    accounts::Accounts,
    devices::{DeviceView, Devices},
    push::Notifications,
    rooms::{
        actions::RoomActions, create::RoomCreation, members::Memberships, membership::MembershipActions,
        timeline::Txn,
    },
    users::Users,
};
use crate::{
    Error, Result,
    config::Config,
    storage::{
        KvStore, Table,
        tables::{SERVER_NOTICE_ROOMS, UserRecord},
    },
};

/// The tag that marks a server notices room (the spec's).
pub const SERVER_NOTICE_TAG: &str = "m.server_notice";
/// User types an admin may set (Synapse's built-in ones).
pub const USER_TYPES: &[&str] = &["bot", "support"];

/// What `GET /_synapse/admin/v2/users` (and v3) filters and sorts by.
pub struct UserListQuery {
    pub from: usize,
    pub limit: usize,
    pub user_id: Option<String>,
    pub name: Option<String>,
    pub guests: bool,
    pub admins: Option<bool>,
    /// `None`: both; `Some(b)`: only accounts whose deactivation is `b`.
    pub deactivated: Option<bool>,
    pub locked: bool,
    pub order_by: String,
    pub backwards: bool,
    pub not_user_types: Vec<String>,
}

/// One page of the user list.
pub struct UserPage {
    pub users: Vec<JsonValue>,
    pub total: usize,
    pub next_token: Option<String>,
}

/// What `PUT /_synapse/admin/v2/users/{userId}` asks for; absent fields are left alone.
/// `Some(None)` clears a nullable field.
#[derive(Default)]
pub struct UserChanges {
    pub password: Option<String>,
    pub logout_devices: bool,
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
    pub user_type: Option<Option<String>>,
}

/// What the spec's account moderation endpoints change.
#[derive(Clone, Copy, Debug)]
pub enum Moderation {
    Lock,
    Suspend,
}

/// The orderings the user list offers.
pub const USER_ORDERS: &[&str] = &[
    "name",
    "displayname",
    "is_guest",
    "admin",
    "deactivated",
    "user_type",
    "avatar_url",
    "shadow_banned",
    "creation_ts",
    "last_seen_ts",
    "locked",
];

pub struct Admin {
    config: Arc<Config>,
    users: Arc<Users>,
    devices: Arc<Devices>,
    accounts: Arc<Accounts>,
    memberships: Arc<Memberships>,
    account_data: Arc<AccountData>,
    notifications: Arc<Notifications>,
    room_creation: Arc<RoomCreation>,
    membership: Arc<MembershipActions>,
    room_actions: Arc<RoomActions>,
    notice_rooms: Table<OwnedUserId, OwnedRoomId>,
    /// One notice at a time, so two first notices to a user make one room.
    notice_lock: tokio::sync::Mutex<()>,
}

/// A device as the admin API shows it.
fn device_json(user_id: &UserId, device: &DeviceView) -> JsonValue {
    json!({
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ms,
        "last_seen_user_agent": device.last_seen_user_agent,
        "user_id": user_id,
    })
}

impl Admin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        config: Arc<Config>,
        users: Arc<Users>,
        devices: Arc<Devices>,
        accounts: Arc<Accounts>,
        memberships: Arc<Memberships>,
        account_data: Arc<AccountData>,
        notifications: Arc<Notifications>,
        room_creation: Arc<RoomCreation>,
        membership: Arc<MembershipActions>,
        room_actions: Arc<RoomActions>,
    ) -> Self {
        Self {
            config,
            users,
            devices,
            accounts,
            memberships,
            account_data,
            notifications,
            room_creation,
            membership,
            room_actions,
            notice_rooms: SERVER_NOTICE_ROOMS.open(store),
            notice_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A local account's record, or 400 for remote users and 404 for unknown ones.
    fn local(&self, user_id: &UserId, what: &str) -> Result<UserRecord> {
        self.accounts.local_account(user_id, what)
    }

    fn last_seen_ms(&self, user_id: &UserId) -> Result<Option<u64>> {
        Ok(self.devices.list(user_id)?.iter().filter_map(|d| d.last_seen_ms).max())
    }

    /// `GET /_synapse/admin/v2/users` and `/v3/users`.
    pub fn list_users(&self, query: &UserListQuery) -> Result<UserPage> {
        struct Row {
            user_id: OwnedUserId,
            record: UserRecord,
            displayname: Option<String>,
            avatar_url: Option<String>,
            last_seen: Option<u64>,
        }
        let name = query.name.as_ref().map(|n| n.to_lowercase());
        let user_filter = query.user_id.as_ref().map(|n| n.to_lowercase());
        let mut rows = Vec::new();
        for (user_id, record) in self.users.all()? {
            if query.deactivated.is_some_and(|d| d != record.deactivated)
                || (!query.locked && record.locked)
                || query.admins.is_some_and(|a| a != record.admin)
            {
                continue;
            }
            if !query.not_user_types.is_empty() {
                let excluded = query.not_user_types.iter().any(|t| match (&record.user_type, t.as_str()) {
                    (None, "") => true,
                    (Some(kind), t) => kind == t,
                    (None, _) => false,
                });
                if excluded {
                    continue;
                }
            }
            let profile = self.users.stored_profile(&user_id)?;
            if let Some(name) = &name {
                let in_localpart = user_id.localpart().to_lowercase().contains(name.as_str());
                let in_displayname =
                    profile.displayname.as_ref().is_some_and(|d| d.to_lowercase().contains(name.as_str()));
                if !in_localpart && !in_displayname {
                    continue;
                }
            } else if let Some(filter) = &user_filter
                && !user_id.as_str().to_lowercase().contains(filter.as_str())
            {
                continue;
            }
            let last_seen = self.last_seen_ms(&user_id)?;
            rows.push(Row {
                displayname: profile.displayname,
                avatar_url: profile.avatar_url.map(|u| u.to_string()),
                user_id,
                record,
                last_seen,
            });
        }
        let key = |a: &Row, b: &Row| -> Ordering {
            match query.order_by.as_str() {
                "displayname" => a.displayname.cmp(&b.displayname),
                "admin" => a.record.admin.cmp(&b.record.admin),
                "deactivated" => a.record.deactivated.cmp(&b.record.deactivated),
                "user_type" => a.record.user_type.cmp(&b.record.user_type),
                "avatar_url" => a.avatar_url.cmp(&b.avatar_url),
                "shadow_banned" => a.record.shadow_banned.cmp(&b.record.shadow_banned),
                "creation_ts" => a.record.created_ms.cmp(&b.record.created_ms),
                "last_seen_ts" => a.last_seen.cmp(&b.last_seen),
                "locked" => a.record.locked.cmp(&b.record.locked),
                // `name`, and `is_guest` (there are no guests here).
                _ => a.user_id.cmp(&b.user_id),
            }
        };
        // Ties go by user ID ascending, whichever the direction (as Synapse).
        rows.sort_by(|a, b| {
            let primary = if query.backwards { key(b, a) } else { key(a, b) };
            primary.then_with(|| a.user_id.cmp(&b.user_id))
        });
        let total = rows.len();
        let users: Vec<JsonValue> = rows
            .into_iter()
            .skip(query.from)
            .take(query.limit)
            .map(|row| {
                json!({
                    "name": row.user_id,
                    "user_type": row.record.user_type,
                    "is_guest": false,
                    "admin": row.record.admin,
                    "deactivated": row.record.deactivated,
                    "shadow_banned": row.record.shadow_banned,
                    "displayname": row.displayname,
                    "avatar_url": row.avatar_url,
                    // Milliseconds here, seconds in the single-user answer: as Synapse.
                    "creation_ts": row.record.created_ms,
                    "erased": row.record.erased,
                    "last_seen_ts": row.last_seen,
                    "locked": row.record.locked,
                })
            })
            .collect();
        let next_token =
            (query.from.saturating_add(query.limit) < total).then(|| (query.from + users.len()).to_string());
        Ok(UserPage { users, total, next_token })
    }

    /// `GET /_synapse/admin/v2/users/{userId}`.
    pub fn user(&self, user_id: &UserId) -> Result<JsonValue> {
        let record = self.local(user_id, "look up")?;
        let profile = self.users.stored_profile(user_id)?;
        Ok(json!({
            "name": user_id,
            "admin": record.admin,
            "deactivated": record.deactivated,
            "locked": record.locked,
            "shadow_banned": record.shadow_banned,
            "creation_ts": record.created_ms / 1000,
            "appservice_id": null,
            "consent_server_notice_sent": null,
            "consent_version": null,
            "consent_ts": null,
            "user_type": record.user_type,
            "is_guest": false,
            "suspended": record.suspended,
            "displayname": profile.displayname,
            "avatar_url": profile.avatar_url,
            "threepids": [],
            "external_ids": [],
            "erased": record.erased,
            "last_seen_ts": self.last_seen_ms(user_id)?,
        }))
    }

    /// `PUT /_synapse/admin/v2/users/{userId}`: create the account (answering `true`) or
    /// change it (`false`), then its details.
    pub async fn put_user(
        &self,
        actor: &UserId,
        user_id: &UserId,
        changes: UserChanges,
    ) -> Result<(bool, JsonValue)> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("This endpoint can only be used with local users"));
        }
        if let Some(Some(kind)) = &changes.user_type
            && !USER_TYPES.contains(&kind.as_str())
        {
            return Err(Error::invalid_param("Invalid user type"));
        }
        if changes.deactivated == Some(true) && changes.locked == Some(true) {
            return Err(Error::invalid_param("An user can't be deactivated and locked"));
        }
        let avatar = |url: &Option<String>| -> Result<Option<OwnedMxcUri>> {
            match url.as_deref() {
                None | Some("") => Ok(None),
                Some(url) if url.starts_with("mxc://") => Ok(Some(url.into())),
                Some(_) => Err(Error::invalid_param("avatar_url must be an mxc:// URI")),
            }
        };
        let Some(current) = self.users.get(user_id)? else {
            self.accounts
                .create_by_admin(
                    user_id,
                    changes.password.as_deref(),
                    changes.admin.unwrap_or(false),
                    changes.displayname.flatten(),
                    changes.user_type.flatten(),
                )
                .await?;
            if let Some(url) = &changes.avatar_url {
                self.users.set_avatar_url(user_id, avatar(url)?)?;
            }
            if changes.locked == Some(true) {
                self.accounts.update_by_admin(user_id, |r| r.locked = true)?;
            }
            return Ok((true, self.user(user_id)?));
        };
        let mut profile_changed = false;
        if let Some(displayname) = changes.displayname {
            self.users.set_displayname(user_id, displayname)?;
            profile_changed = true;
        }
        if let Some(url) = &changes.avatar_url {
            self.users.set_avatar_url(user_id, avatar(url)?)?;
            profile_changed = true;
        }
        if profile_changed {
            self.membership.profile_changed(user_id).await?;
        }
        if let Some(admin) = changes.admin
            && admin != current.admin
        {
            let context = super::context::RequestContext::internal(
                super::context::Actor::User { user_id: actor.to_owned(), device_id: None },
                "admin API",
            );
            self.accounts.set_admin(&context, user_id, admin)?;
        }
        if let Some(password) = &changes.password {
            self.accounts.set_password_by_admin(user_id, password, changes.logout_devices).await?;
        }
        match changes.deactivated {
            Some(true) if !current.deactivated => self.deactivate(user_id, false).await?,
            Some(false) if current.deactivated => {
                // As Synapse: no longer erased; rooms are not rejoined; it logs in once it has
                // a password again.
                self.accounts.update_by_admin(user_id, |r| {
                    r.deactivated = false;
                    r.erased = false;
                })?;
            }
            _ => {}
        }
        if let Some(locked) = changes.locked {
            self.accounts.update_by_admin(user_id, |r| r.locked = locked)?;
        }
        if let Some(user_type) = changes.user_type {
            self.accounts.update_by_admin(user_id, |r| r.user_type = user_type)?;
        }
        Ok((false, self.user(user_id)?))
    }

    /// `POST /_synapse/admin/v1/deactivate/{userId}`, as Synapse deactivates: devices (with
    /// their keys, pushers and messages), key backup and delayed events go, then account
    /// data; the account leaves (and forgets) every room it is in, and rejects its invites
    /// and knocks. With `erase` its profile is cleared and it is marked erased.
    pub async fn deactivate(&self, user_id: &UserId, erase: bool) -> Result<()> {
        self.local(user_id, "deactivate")?;
        self.accounts.deactivate_account(user_id, erase)?;
        self.account_data.remove_all(user_id)?;
        let mut rooms = Vec::new();
        for state in [MembershipState::Join, MembershipState::Invite, MembershipState::Knock] {
            rooms.extend(self.memberships.rooms_of_user(user_id, &state)?);
        }
        for room_id in rooms {
            let left = self.membership.leave(user_id, &room_id, None, JsonMap::new()).await;
            if let Err(error) = left.and_then(|_| self.membership.forget(user_id, &room_id)) {
                tracing::warn!(%user_id, %room_id, %error, "deactivated user could not leave a room");
            }
        }
        Ok(())
    }

    /// `POST /_synapse/admin/v1/reset_password/{userId}`.
    pub async fn reset_password(&self, user_id: &UserId, password: &str, logout_devices: bool) -> Result<()> {
        let record = self.local(user_id, "reset the password of")?;
        if record.deactivated {
            return Err(Error::invalid_param("Cannot reset the password of a deactivated user"));
        }
        self.accounts.set_password_by_admin(user_id, password, logout_devices).await
    }

    /// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
    pub fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        self.local(user_id, "look up")?;
        self.memberships.rooms_of_user(user_id, &MembershipState::Join)
    }

    /// `GET /_synapse/admin/v1/users/{userId}/memberships`: every room with the user's
    /// membership in it.
    pub fn memberships(&self, user_id: &UserId) -> Result<JsonMap<String, JsonValue>> {
        self.local(user_id, "look up")?;
        Ok(self
            .memberships
            .memberships_of_user(user_id)?
            .into_iter()
            .map(|(room_id, record)| (room_id.to_string(), JsonValue::String(record.membership)))
            .collect())
    }

    /// `GET /_synapse/admin/v1/users/{userId}/pushers`.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<Box<serde_json::value::RawValue>>> {
        self.local(user_id, "look up")?;
        self.notifications.pushers(user_id)
    }

    /// `GET /_synapse/admin/v1/users/{userId}/accountdata`: global and per-room account data.
    pub fn account_data(&self, user_id: &UserId) -> Result<JsonValue> {
        self.local(user_id, "look up")?;
        let mut global = JsonMap::new();
        let mut rooms: JsonMap<String, JsonValue> = JsonMap::new();
        for entry in self.account_data.changes(user_id, None, u64::MAX)? {
            let content: JsonValue = serde_json::from_str(entry.content.get()).unwrap_or(JsonValue::Null);
            match entry.room_id {
                None => {
                    global.insert(entry.kind, content);
                }
                Some(room_id) => {
                    let room = rooms.entry(room_id.to_string()).or_insert_with(|| json!({}));
                    if let Some(map) = room.as_object_mut() {
                        map.insert(entry.kind, content);
                    }
                }
            }
        }
        Ok(json!({ "account_data": { "global": global, "rooms": rooms } }))
    }

    /// `GET /_synapse/admin/v1/username_available?username=`: whether the localpart is valid
    /// and free, whatever the registration policy.
    pub fn username_available(&self, localpart: &str) -> Result<()> {
        let user_id =
            crate::matrix::user_id::registrable_user_id(&localpart.to_lowercase(), &self.config.server_name)
                .map_err(|e| Error::new(ruma::api::error::ErrorKind::InvalidUsername, e.to_string()))?;
        if self.users.exists(&user_id)? {
            return Err(Error::new(ruma::api::error::ErrorKind::UserInUse, "User ID already taken."));
        }
        Ok(())
    }

    /// `POST|DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`.
    pub fn set_shadow_banned(&self, user_id: &UserId, banned: bool) -> Result<()> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Only local users can be shadow-banned"));
        }
        self.local(user_id, "shadow-ban")?;
        self.accounts.update_by_admin(user_id, |r| r.shadow_banned = banned).map(drop)
    }

    /// `PUT /_synapse/admin/v1/suspend/{userId}`.
    pub fn set_suspended(&self, user_id: &UserId, suspended: bool) -> Result<()> {
        self.local(user_id, "suspend")?;
        self.accounts.update_by_admin(user_id, |r| r.suspended = suspended).map(drop)
    }

    /// The spec's account moderation (`GET|PUT /_matrix/client/v1/admin/{lock,suspend}/{userId}`):
    /// the caller's admin flag is checked before the target is looked up, so the endpoint
    /// does not tell non-admins which accounts exist. `change` sets the flag; the answer is
    /// the account's `(locked, suspended)` afterwards.
    pub fn moderate(
        &self,
        actor: &UserId,
        user_id: &UserId,
        change: Option<(Moderation, bool)>,
    ) -> Result<(bool, bool)> {
        if !self.accounts.is_admin(actor)? {
            return Err(Error::forbidden("You are not a server admin"));
        }
        let record = self.local(user_id, "moderate")?;
        let record = match change {
            None => record,
            Some((Moderation::Lock, locked)) => {
                if locked && record.deactivated {
                    return Err(Error::invalid_param("A deactivated account cannot be locked"));
                }
                self.accounts.update_by_admin(user_id, |r| r.locked = locked)?
            }
            Some((Moderation::Suspend, suspended)) => {
                self.accounts.update_by_admin(user_id, |r| r.suspended = suspended)?
            }
        };
        Ok((record.locked, record.suspended))
    }

    /// `POST /_synapse/admin/v1/users/{userId}/login`.
    pub fn login_as(&self, actor: &UserId, user_id: &UserId, valid_until_ms: Option<u64>) -> Result<String> {
        self.accounts.login_as(actor, user_id, valid_until_ms)
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices`: the user's devices as they see them.
    pub fn devices(&self, user_id: &UserId) -> Result<Vec<JsonValue>> {
        self.local(user_id, "look up")?;
        Ok(self.devices.list_visible(user_id)?.iter().map(|d| device_json(user_id, d)).collect())
    }

    /// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<JsonValue> {
        self.local(user_id, "look up")?;
        let device =
            self.devices.get(user_id, device_id)?.ok_or_else(|| Error::not_found("Device not found"))?;
        Ok(device_json(user_id, &device))
    }

    /// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}` with `display_name`.
    pub fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<String>) -> Result<()> {
        self.local(user_id, "look up")?;
        self.accounts.rename_device(user_id, device_id, name)
    }

    /// `DELETE .../devices/{deviceId}` and `POST .../delete_devices`: the devices go with
    /// their tokens, keys, pushers and messages, without re-authentication.
    pub fn delete_devices(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        self.local(user_id, "look up")?;
        self.accounts.delete_devices_by_admin(user_id, device_ids)
    }

    /// `GET /_synapse/admin/v1/whois/{userId}`.
    pub fn whois(
        &self,
        actor: &UserId,
        user_id: &UserId,
    ) -> Result<ruma::api::client::admin::get_user_info::v3::Response> {
        self.local(user_id, "whois")?;
        self.accounts.whois(actor, user_id)
    }

    /// `POST /_synapse/admin/v1/send_server_notice` (and the `PUT` with a transaction ID):
    /// send `content` (with `kind`, `m.room.message` by default) from the server notices
    /// user into the user's notices room, made on the first notice: invited, tagged
    /// `m.server_notice`, where the user's power (-10) is below what sending needs. A user
    /// who left it is invited again. Answers the event ID.
    pub async fn send_server_notice(
        &self,
        user_id: &UserId,
        kind: &str,
        content: JsonValue,
        txn: Option<Txn<'_>>,
    ) -> Result<ruma::OwnedEventId> {
        let notices = self
            .config
            .server_notices_user()
            .ok_or_else(|| Error::invalid_param("Server notices are not enabled on this server"))?;
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Server notices can only be sent to local users"));
        }
        let record = self.users.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        if record.deactivated {
            return Err(Error::invalid_param("Cannot send server notices to a deactivated user"));
        }
        if user_id == notices {
            return Err(Error::invalid_param("Cannot send server notices to the server notices user"));
        }
        let _one_at_a_time = self.notice_lock.lock().await;
        self.ensure_notices_user(&notices).await?;
        let room_id = self.notice_room(&notices, user_id).await?;
        self.room_actions.send_message(&notices, &room_id, kind, content, txn, None).await
    }

    /// The server notices user, created (without a password: nobody logs in as it) on
    /// first use, its profile kept as configured.
    async fn ensure_notices_user(&self, notices: &UserId) -> Result<()> {
        let settings = &self.config.server_notices;
        if !self.users.exists(notices)? {
            let name = settings.system_mxid_display_name.clone();
            self.accounts.create_by_admin(notices, None, false, name, None).await?;
        }
        let profile = self.users.stored_profile(notices)?;
        let mut changed = false;
        if let Some(name) = &settings.system_mxid_display_name
            && profile.displayname.as_ref() != Some(name)
        {
            self.users.set_displayname(notices, Some(name.clone()))?;
            changed = true;
        }
        let avatar: Option<OwnedMxcUri> = settings.system_mxid_avatar_url.as_deref().map(Into::into);
        if avatar.is_some() && profile.avatar_url != avatar {
            self.users.set_avatar_url(notices, avatar)?;
            changed = true;
        }
        if changed {
            self.membership.profile_changed(notices).await?;
        }
        Ok(())
    }

    /// The user's notices room: the stored one while the notices user is still in it
    /// (inviting the user again if they left), else a new one.
    async fn notice_room(&self, notices: &UserId, user_id: &UserId) -> Result<OwnedRoomId> {
        if let Some(room_id) = self.notice_rooms.get(&user_id.to_owned())?
            && self.memberships.is_joined(&room_id, notices)?
        {
            match self.memberships.membership(&room_id, user_id)? {
                Some(MembershipState::Join | MembershipState::Invite) => {}
                _ => {
                    self.membership.invite(notices, &room_id, user_id, None, JsonMap::new()).await?;
                }
            }
            return Ok(room_id);
        }
        let mut request = CreateRoomRequest::new();
        request.preset = Some(RoomPreset::PrivateChat);
        request.name = Some(self.config.server_notices.room_name.clone());
        request.invite = vec![user_id.to_owned()];
        // Everyone but the notices user is at -10: below the 0 that sending any event needs.
        request.power_level_content_override = Some(
            Raw::from_json_string(json!({ "users_default": -10 }).to_string())
                .map_err(|e| Error::internal(format!("power level override: {e}")))?,
        );
        let room_id = self.room_creation.create_room(notices, request).await?;
        self.account_data.set_tag(user_id, &room_id, SERVER_NOTICE_TAG, Some(json!({})))?;
        self.notice_rooms.insert(&user_id.to_owned(), &room_id)?;
        tracing::info!(%user_id, %room_id, "created server notices room");
        Ok(room_id)
    }
}
