//! Devices and the tokens that authenticate them. Owns the `devices`, `access_tokens` and
//! `refresh_tokens` tables. A device has at most one live access token and one refresh token;
//! logging in again with the same device ID replaces them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use base64::Engine as _;
use rand::RngCore as _;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use sha2::{Digest as _, Sha256};

use super::clock::Clock;
use crate::{
    Error, Result,
    matrix::limits::{self, MAX_DEVICE_ID_BYTES},
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{
            ACCESS_TOKENS, AccessTokenRecord, DEVICES, DeviceRecord, PreviousRefreshToken, REFRESH_TOKENS,
            RefreshTokenRecord, TokenHash,
        },
    },
};

/// Who a valid access token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// Tokens handed to a client at login, registration or refresh. The secrets exist only here
/// and in the response; storage keeps their hashes.
pub struct IssuedTokens {
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

/// A device as shown to its owner.
pub struct DeviceView {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ms: Option<u64>,
    pub last_seen_user_agent: Option<String>,
    /// An admin's "login as" session, which the user's own device list leaves out.
    pub hidden: bool,
    /// The OAuth 2.0 client whose session it is, if any.
    pub oauth_client: Option<String>,
}

/// A device's last sighting held in memory until the next flush.
#[derive(Clone)]
struct Sighting {
    ip: String,
    user_agent: Option<String>,
    at_ms: u64,
}

type DeviceKey = (OwnedUserId, OwnedDeviceId);

/// How long a spent refresh token of an OAuth 2.0 session may be used again.
pub const OAUTH_REFRESH_GRACE: Duration = Duration::from_secs(60);

/// Longest device display name accepted, in characters (as Synapse).
const MAX_DISPLAY_NAME_LEN: usize = 100;

/// Refuse a device ID or initial display name a client chose that is longer than allowed.
/// Both are stored with the device and shown to everyone who queries its keys.
pub fn check_new_device(device_id: Option<&DeviceId>, display_name: Option<&str>) -> Result<()> {
    if let Some(device_id) = device_id {
        limits::check_len(device_id.as_str(), MAX_DEVICE_ID_BYTES, "device_id")
            .map_err(Error::invalid_param)?;
    }
    check_display_name(display_name)
}

fn check_display_name(name: Option<&str>) -> Result<()> {
    if name.is_some_and(|n| n.chars().count() > MAX_DISPLAY_NAME_LEN) {
        return Err(Error::invalid_param("Device display name is too long (max 100)"));
    }
    Ok(())
}

pub struct Devices {
    store: Arc<dyn KvStore>,
    devices: Table<DeviceKey, DeviceRecord>,
    access_tokens: Table<TokenHash, AccessTokenRecord>,
    refresh_tokens: Table<TokenHash, RefreshTokenRecord>,
    clock: Arc<dyn Clock>,
    /// Lifetime of access tokens that come with a refresh token.
    refreshable_lifetime: Duration,
    /// Last-seen updates held in memory and written in bulk by `flush_last_seen`, so that an
    /// authenticated request costs a map insert rather than a database write.
    last_seen: Mutex<HashMap<DeviceKey, Sighting>>,
    /// Serialises every read-modify-write of device records and the tokens they point at
    /// (and the account flows in `Accounts` that commit with them), so two writers can never
    /// leave a token that no device record knows about and so nothing revokes.
    writes: Mutex<()>,
}

/// Proof that the caller holds the device write lock; the `*_in` methods demand it. Holding
/// it is synchronous: no `.await` may happen while it lives.
pub type WriteGuard<'a> = MutexGuard<'a, ()>;

fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// A fresh secret: 32 random bytes from the OS generator, URL-safe base64.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A device ID like Synapse's: ten upper-case letters.
fn new_device_id() -> OwnedDeviceId {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let id: String = (0..10).map(|_| char::from(rng.gen_range(b'A'..=b'Z'))).collect();
    id.into()
}

impl Devices {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, refreshable_lifetime: Duration) -> Self {
        Self {
            store: Arc::clone(store),
            devices: DEVICES.open(store),
            access_tokens: ACCESS_TOKENS.open(store),
            refresh_tokens: REFRESH_TOKENS.open(store),
            clock,
            refreshable_lifetime,
            last_seen: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
        }
    }

    /// Take the write lock; see `WriteGuard`.
    pub fn write_lock(&self) -> Result<WriteGuard<'_>> {
        self.writes.lock().map_err(|_| Error::internal("device write lock poisoned"))
    }

    /// Resolve an access token. Expired tokens give a soft logout (the client may refresh or
    /// log in again keeping its device); unknown ones a hard one.
    pub fn authenticate(&self, token: &str) -> Result<DeviceIdentity> {
        let record = self
            .access_tokens
            .get(&hash_token(token))?
            .ok_or_else(|| Error::unknown_token(false, "Unknown access token"))?;
        if record.expires_ms.is_some_and(|exp| exp <= self.clock.now_ms()) {
            return Err(Error::unknown_token(true, "Access token has expired"));
        }
        Ok(DeviceIdentity { user_id: record.user_id, device_id: record.device_id })
    }

    /// Note that a device was just used from `ip` by `user_agent`; cheap, persisted later.
    pub fn touch(&self, identity: &DeviceIdentity, ip: String, user_agent: Option<String>) {
        let sighting = Sighting { ip, user_agent, at_ms: self.clock.now_ms() };
        if let Ok(mut pending) = self.last_seen.lock() {
            pending.insert((identity.user_id.clone(), identity.device_id.clone()), sighting);
        }
    }

    /// Write pending last-seen updates to storage. Called periodically and at shutdown.
    pub fn flush_last_seen(&self) -> Result<()> {
        let pending = match self.last_seen.lock() {
            Ok(mut map) => std::mem::take(&mut *map),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let _guard = self.write_lock()?;
        let keys: Vec<DeviceKey> = pending.keys().cloned().collect();
        let records = self.devices.get_many(&keys)?;
        let mut batch = WriteBatch::new();
        for (key, record) in keys.iter().zip(records) {
            // A device deleted meanwhile stays deleted.
            let Some(mut record) = record else { continue };
            let sighting = &pending[key];
            record.last_seen_ip = Some(sighting.ip.clone());
            record.last_seen_ms = Some(sighting.at_ms);
            record.last_seen_user_agent = sighting.user_agent.clone();
            self.devices.put(&mut batch, key, &record)?;
        }
        Ok(self.store.write(batch)?)
    }

    /// Queue a new login session for `user_id`: the device is created, or, if `device_id`
    /// names an existing device, its old tokens are revoked and replaced (and its display
    /// name kept: the spec ignores `initial_device_display_name` for a known device).
    // The guard and batch tie it to the caller's locked write; the rest is the session.
    #[allow(clippy::too_many_arguments)]
    pub fn create_session_in(
        &self,
        proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        refreshable: bool,
        client_ip: String,
    ) -> Result<IssuedTokens> {
        self.new_session_in(proof, batch, user_id, device_id, display_name, refreshable, client_ip, None)
    }

    /// Queue a new session of an OAuth 2.0 client: as a login, always with a refresh token,
    /// and the device remembers the client.
    // The guard and batch tie it to the caller's locked write; the rest is the session.
    #[allow(clippy::too_many_arguments)]
    pub fn create_oauth_session_in(
        &self,
        proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: OwnedDeviceId,
        display_name: Option<String>,
        client_id: &str,
        client_ip: String,
    ) -> Result<IssuedTokens> {
        let client = Some(client_id.to_owned());
        self.new_session_in(proof, batch, user_id, Some(device_id), display_name, true, client_ip, client)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_session_in(
        &self,
        _proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        refreshable: bool,
        client_ip: String,
        oauth_client: Option<String>,
    ) -> Result<IssuedTokens> {
        check_new_device(device_id.as_deref(), display_name.as_deref())?;
        let device_id = device_id.unwrap_or_else(new_device_id);
        let key = (user_id.to_owned(), device_id.clone());
        let now = self.clock.now_ms();
        let mut record = match self.devices.get(&key)? {
            Some(existing) => {
                self.revoke_tokens_in(batch, &existing);
                DeviceRecord {
                    last_seen_ip: Some(client_ip),
                    last_seen_ms: Some(now),
                    // The agent is learnt from the session's first authenticated request.
                    last_seen_user_agent: None,
                    previous_refresh_token: None,
                    ..existing
                }
            }
            None => DeviceRecord {
                display_name,
                created_ms: now,
                // The login itself is the first sighting.
                last_seen_ip: Some(client_ip),
                last_seen_ms: Some(now),
                last_seen_user_agent: None,
                access_token: None,
                refresh_token: None,
                hidden: false,
                oauth_client: None,
                previous_refresh_token: None,
            },
        };
        // A device that logs in again is the session of whoever logged it in last.
        record.oauth_client = oauth_client;
        let issued = self.issue_tokens_in(batch, &key, &mut record, refreshable)?;
        self.devices.put(batch, &key, &record)?;
        Ok(issued)
    }

    /// Queue a device that has no access token: a dehydrated device, which holds keys and
    /// receives to-device messages until a client rehydrates it. An existing device of that
    /// ID is refused.
    pub fn add_tokenless_in(
        &self,
        _proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        check_new_device(Some(device_id), display_name.as_deref())?;
        let key = (user_id.to_owned(), device_id.to_owned());
        if self.devices.contains(&key)? {
            return Err(Error::invalid_param("A device with this ID already exists"));
        }
        let record = DeviceRecord {
            display_name,
            created_ms: self.clock.now_ms(),
            last_seen_ip: None,
            last_seen_ms: None,
            last_seen_user_agent: None,
            access_token: None,
            refresh_token: None,
            hidden: false,
            oauth_client: None,
            previous_refresh_token: None,
        };
        Ok(self.devices.put(batch, &key, &record)?)
    }

    /// Queue a hidden device for an admin acting as `user_id` ("login as", as Synapse's
    /// puppet tokens): a new device ID, left out of the user's device list, whose access
    /// token expires at `valid_until_ms` if given.
    pub fn create_hidden_session_in(
        &self,
        _proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        valid_until_ms: Option<u64>,
    ) -> Result<IssuedTokens> {
        let key = (user_id.to_owned(), new_device_id());
        let mut record = DeviceRecord {
            display_name: None,
            created_ms: self.clock.now_ms(),
            last_seen_ip: None,
            last_seen_ms: None,
            last_seen_user_agent: None,
            access_token: None,
            refresh_token: None,
            hidden: true,
            oauth_client: None,
            previous_refresh_token: None,
        };
        let access_token = new_token();
        let access_hash = hash_token(&access_token);
        let token_record = AccessTokenRecord {
            user_id: key.0.clone(),
            device_id: key.1.clone(),
            expires_ms: valid_until_ms,
        };
        self.access_tokens.put(batch, &access_hash, &token_record)?;
        record.access_token = Some(access_hash);
        self.devices.put(batch, &key, &record)?;
        Ok(IssuedTokens { device_id: key.1, access_token, refresh_token: None, expires_in: None })
    }

    fn issue_tokens_in(
        &self,
        batch: &mut WriteBatch,
        key: &DeviceKey,
        record: &mut DeviceRecord,
        refreshable: bool,
    ) -> Result<IssuedTokens> {
        let access_token = new_token();
        let access_hash = hash_token(&access_token);
        let expires_in = refreshable.then_some(self.refreshable_lifetime);
        let expires_ms = expires_in.map(|d| self.clock.now_ms().saturating_add(d.as_millis() as u64));
        let token_record = AccessTokenRecord { user_id: key.0.clone(), device_id: key.1.clone(), expires_ms };
        self.access_tokens.put(batch, &access_hash, &token_record)?;
        record.access_token = Some(access_hash);

        let refresh_token = if refreshable {
            let token = new_token();
            let hash = hash_token(&token);
            let refresh_record = RefreshTokenRecord { user_id: key.0.clone(), device_id: key.1.clone() };
            self.refresh_tokens.put(batch, &hash, &refresh_record)?;
            record.refresh_token = Some(hash);
            Some(token)
        } else {
            record.refresh_token = None;
            None
        };
        Ok(IssuedTokens { device_id: key.1.clone(), access_token, refresh_token, expires_in })
    }

    fn revoke_tokens_in(&self, batch: &mut WriteBatch, record: &DeviceRecord) {
        if let Some(hash) = &record.access_token {
            self.access_tokens.delete(batch, hash);
        }
        if let Some(hash) = &record.refresh_token {
            self.refresh_tokens.delete(batch, hash);
        }
        if let Some(previous) = &record.previous_refresh_token {
            self.refresh_tokens.delete(batch, &previous.hash);
        }
    }

    /// Spend a refresh token of the legacy API (`POST /refresh`): the device gets a new
    /// access token and a new refresh token, and both old ones stop working at once. The
    /// tokens of an OAuth 2.0 session are refreshed at its token endpoint instead.
    pub fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        self.refresh_for(refresh_token, None)
    }

    /// Spend a refresh token of an OAuth 2.0 session of `client_id`. The token spent stays
    /// good for `OAUTH_REFRESH_GRACE` (the spec: a client whose answer was lost must be able
    /// to repeat the request); using it again within that time replaces the tokens the first
    /// use gave.
    pub fn refresh_oauth(&self, refresh_token: &str, client_id: &str) -> Result<IssuedTokens> {
        self.refresh_for(refresh_token, Some(client_id))
    }

    fn refresh_for(&self, refresh_token: &str, client_id: Option<&str>) -> Result<IssuedTokens> {
        let _guard = self.write_lock()?;
        let hash = hash_token(refresh_token);
        let unknown = || Error::unknown_token(false, "Unknown refresh token");
        let owner = self.refresh_tokens.get(&hash)?.ok_or_else(unknown)?;
        let key = (owner.user_id, owner.device_id);
        let mut record = self.devices.get(&key)?.ok_or_else(unknown)?;
        if record.oauth_client.as_deref() != client_id {
            return Err(unknown());
        }
        let now = self.clock.now_ms();
        let current = record.refresh_token == Some(hash);
        let repeated =
            record.previous_refresh_token.as_ref().is_some_and(|p| p.hash == hash && now < p.until_ms);
        if !current && !repeated {
            return Err(unknown());
        }
        let mut batch = WriteBatch::new();
        if let Some(hash) = &record.access_token {
            self.access_tokens.delete(&mut batch, hash);
        }
        if let Some(spent) = record.refresh_token.take() {
            if current && client_id.is_some() {
                // The token just spent becomes the one that may be repeated; the one before
                // it goes for good.
                if let Some(older) = record.previous_refresh_token.take() {
                    self.refresh_tokens.delete(&mut batch, &older.hash);
                }
                let until_ms = now.saturating_add(OAUTH_REFRESH_GRACE.as_millis() as u64);
                record.previous_refresh_token = Some(PreviousRefreshToken { hash: spent, until_ms });
            } else {
                self.refresh_tokens.delete(&mut batch, &spent);
            }
        }
        let issued = self.issue_tokens_in(&mut batch, &key, &mut record, true)?;
        self.devices.put(&mut batch, &key, &record)?;
        self.store.write(batch)?;
        Ok(issued)
    }

    /// The user and device a token (access or refresh) of an OAuth 2.0 session belongs to,
    /// and the client, for token revocation.
    pub fn oauth_token_owner(&self, token: &str) -> Result<Option<(DeviceIdentity, String)>> {
        let hash = hash_token(token);
        let owner = match self.access_tokens.get(&hash)? {
            Some(record) => Some((record.user_id, record.device_id)),
            None => self.refresh_tokens.get(&hash)?.map(|record| (record.user_id, record.device_id)),
        };
        let Some(key) = owner else { return Ok(None) };
        let Some(client) = self.devices.get(&key)?.and_then(|record| record.oauth_client) else {
            return Ok(None);
        };
        Ok(Some((DeviceIdentity { user_id: key.0, device_id: key.1 }, client)))
    }

    /// The OAuth 2.0 client a device is the session of, if any.
    pub fn oauth_client_of(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<String>> {
        let key = (user_id.to_owned(), device_id.to_owned());
        Ok(self.devices.get(&key)?.and_then(|record| record.oauth_client))
    }

    /// Queue removal of one device and its tokens. Unknown devices are ignored.
    pub fn remove_in(
        &self,
        _proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        let key = (user_id.to_owned(), device_id.to_owned());
        if let Some(record) = self.devices.get(&key)? {
            self.revoke_tokens_in(batch, &record);
            self.devices.delete(batch, &key);
        }
        Ok(())
    }

    /// Queue removal of every device of `user_id` except `keep`.
    pub fn remove_all_in(
        &self,
        _proof: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        for row in self.devices.scan_prefix(&user_id.to_owned(), Direction::Forward)? {
            let ((_, device_id), record) = row?;
            if Some(device_id.as_ref()) != keep {
                self.revoke_tokens_in(batch, &record);
                self.devices.delete(batch, &(user_id.to_owned(), device_id));
            }
        }
        Ok(())
    }

    fn view(&self, key: &DeviceKey, record: DeviceRecord) -> DeviceView {
        let pending = self.last_seen.lock().ok().and_then(|m| m.get(key).cloned());
        let (last_seen_ip, last_seen_ms, last_seen_user_agent) = match pending {
            Some(seen) => (Some(seen.ip), Some(seen.at_ms), seen.user_agent),
            None => (record.last_seen_ip, record.last_seen_ms, record.last_seen_user_agent),
        };
        DeviceView {
            device_id: key.1.clone(),
            display_name: record.display_name,
            last_seen_ip,
            last_seen_ms,
            last_seen_user_agent,
            hidden: record.hidden,
            oauth_client: record.oauth_client,
        }
    }

    /// The devices a user sees as theirs, in device-id order: all but admins' hidden
    /// "login as" sessions.
    pub fn list_visible(&self, user_id: &UserId) -> Result<Vec<DeviceView>> {
        Ok(self.list(user_id)?.into_iter().filter(|d| !d.hidden).collect())
    }

    /// Refuse end-to-end keys from an admin's "login as" session: on Synapse such a session
    /// has no device and cannot upload them, so the user's contacts never see a device the
    /// user did not make.
    pub fn ensure_may_upload_keys(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let key = (user_id.to_owned(), device_id.to_owned());
        if self.devices.get(&key)?.is_some_and(|d| d.hidden) {
            return Err(Error::invalid_param("An admin's login-as session cannot upload keys"));
        }
        Ok(())
    }

    /// All devices of a user, hidden ones included, in device-id order.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<DeviceView>> {
        self.devices
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| {
                let (key, record) = row?;
                Ok(self.view(&key, record))
            })
            .collect()
    }

    /// One device of a user.
    pub fn get(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceView>> {
        let key = (user_id.to_owned(), device_id.to_owned());
        Ok(self.devices.get(&key)?.map(|record| self.view(&key, record)))
    }

    /// Rename a device; `M_NOT_FOUND` if the user has no such device. `None` leaves the name.
    /// Whether the name changed.
    pub fn set_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        name: Option<String>,
    ) -> Result<bool> {
        check_display_name(name.as_deref())?;
        let key = (user_id.to_owned(), device_id.to_owned());
        let _guard = self.write_lock()?;
        let mut record = self.devices.get(&key)?.ok_or_else(|| Error::not_found("Not found"))?;
        if name.is_none() || name == record.display_name {
            return Ok(false);
        }
        record.display_name = name;
        self.devices.insert(&key, &record)?;
        Ok(true)
    }
}
