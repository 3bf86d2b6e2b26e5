//! Account life-cycle flows that span several services: registration, login, password
//! change, deactivation and device removal. Each flow checks policy, runs user-interactive
//! auth where the spec demands it, and commits its writes to users and devices in one batch.
//! Logins through the company's systems live beside it: `ldap_login` (passwords the LDAP
//! directory keeps), `jwt_login` (`org.matrix.login.jwt`) and `sso` (single sign-on's side:
//! one-time login tokens, accounts of identity-provider users, the devices each provider
//! session signed in, in the `sso_sessions` tables it owns) and `oauth` (the devices of OAuth
//! 2.0 sessions, token revocation, and approved identity resets in `cross_signing_resets`).

mod jwt_login;
mod ldap_login;
mod oauth;
mod sso;

pub use self::sso::SsoPolicy;

use std::sync::Arc;

use ruma::{
    DeviceId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedUserId, UInt, UserId,
    api::client::{
        account::{ThirdPartyIdRemovalStatus, change_password, deactivate, register},
        admin::get_user_info::{
            self,
            v3::{ConnectionInfo, DeviceInfo, SessionInfo},
        },
        session::login,
        uiaa::{AuthData, AuthFlow, AuthType, UserIdentifier},
    },
};

use ruma::api::error::ErrorKind;

use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use super::{
    appservices::Appservices,
    audit::{self, Audit},
    context::{Actor, Caller, RequestContext},
    delayed_events::DelayedEvents,
    devices::{self, DeviceIdentity, Devices, IssuedTokens, WriteGuard},
    key_backup::KeyBackup,
    keys::{CrossSigningUpload, Keys},
    login_tokens::LoginTokens,
    passwords::random_string,
    push::Notifications,
    rate_limits::{Limiter, RateLimits},
    registration_tokens::RegistrationTokens,
    sliding_sync::Connections,
    to_device::ToDevice,
    uiaa::{Params, Uiaa, UiaaRequest},
    users::Users,
};
use crate::{
    Error, Result,
    config::Config,
    matrix::{
        appservice::Registration,
        user_id::{registrable_user_id, resolve_login_user},
    },
    storage::{
        KvStore, Table, WriteBatch,
        tables::{CROSS_SIGNING_RESETS, DEHYDRATED_DEVICES, DehydratedDeviceRecord},
    },
};

/// Longest password accepted, in bytes (as Synapse), so hashing cost stays bounded.
const MAX_PASSWORD_LEN: usize = 512;

pub struct Accounts {
    store: Arc<dyn KvStore>,
    config: Arc<Config>,
    users: Arc<Users>,
    devices: Arc<Devices>,
    uiaa: Arc<Uiaa>,
    keys: Arc<Keys>,
    to_device: Arc<ToDevice>,
    key_backup: Arc<KeyBackup>,
    notifications: Arc<Notifications>,
    audit: Arc<Audit>,
    /// Sliding sync connections, which go with their device.
    sliding_connections: Arc<Connections>,
    /// Deactivation cancels the account's delayed events.
    delayed_events: Arc<DelayedEvents>,
    /// Registration tokens, whose uses registrations count.
    registration_tokens: Arc<RegistrationTokens>,
    /// Logins and registrations are counted here, before passwords are hashed.
    rate_limits: Arc<RateLimits>,
    appservices: Arc<Appservices>,
    dehydrated: Table<OwnedUserId, DehydratedDeviceRecord>,
    logins: Logins,
    /// One-time login tokens (`m.login.token`).
    login_tokens: Arc<LoginTokens>,
    /// Devices signed in through an identity provider, by provider session and by device.
    sso_sessions: sso::SessionTables,
    /// Until when each user approved replacing their cross-signing keys (`m.oauth`).
    cross_signing_resets: Table<OwnedUserId, u64>,
}

/// The company's systems logins go through besides local passwords, and where the accounts
/// they make keep what those systems say of them.
pub struct Logins {
    pub ldap: Arc<super::ldap::Ldap>,
    pub jwt: Arc<super::jwt::JwtLogin>,
    /// Where a directory account's email address is kept.
    pub threepids: Arc<super::threepids::ThirdPartyIds>,
}

/// What a registration asks for, besides the password: the parameters its user-interactive
/// auth session remembers, so later requests of the session may leave them out.
#[derive(Default, Serialize, Deserialize)]
struct RegistrationParams {
    /// Lower-cased, as Synapse does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<OwnedDeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_device_display_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inhibit_login: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    refresh_token: bool,
}

impl RegistrationParams {
    fn of(req: &register::v3::Request) -> Self {
        Self {
            username: req.username.as_ref().map(|n| n.to_lowercase()),
            device_id: req.device_id.clone(),
            initial_device_display_name: req.initial_device_display_name.clone(),
            inhibit_login: req.inhibit_login,
            refresh_token: req.refresh_token,
        }
    }

    fn to_params(&self) -> Result<Params> {
        match serde_json::to_value(self) {
            Ok(JsonValue::Object(params)) => Ok(params),
            Ok(_) => Err(Error::internal("registration parameters are not an object")),
            Err(e) => Err(Error::internal(format!("registration parameters: {e}"))),
        }
    }
}

/// A login's answer: the user, the new device and its tokens.
fn login_response(user_id: OwnedUserId, issued: IssuedTokens) -> login::v3::Response {
    let mut response = login::v3::Response::new(user_id, issued.access_token, issued.device_id);
    response.refresh_token = issued.refresh_token;
    response.expires_in = issued.expires_in;
    response
}

/// A registration's answer: the user, and the device and tokens unless `inhibit_login`.
fn register_response(user_id: OwnedUserId, issued: Option<IssuedTokens>) -> register::v3::Response {
    let mut response = register::v3::Response::new(user_id);
    if let Some(issued) = issued {
        response.access_token = Some(issued.access_token);
        response.device_id = Some(issued.device_id);
        response.refresh_token = issued.refresh_token;
        response.expires_in = issued.expires_in;
    }
    response
}

/// The request's context with the appservice (as its sender) as the actor.
fn acting_appservice(context: &RequestContext, appservice: &Registration) -> RequestContext {
    RequestContext {
        actor: Actor::Appservice {
            id: appservice.id.clone(),
            user_id: appservice.sender.clone(),
            device_id: None,
        },
        ..context.clone()
    }
}

/// What a password sign-in is for.
pub(super) enum SignIn<'a> {
    /// `POST /login`: a device and its tokens.
    Device(&'a login::v3::Request),
    /// This server's own web pages: the user, and no device.
    Browser,
}

impl SignIn<'_> {
    /// An audit record's parameters, saying when the sign-in was a browser's.
    fn mark(&self, mut params: JsonValue) -> JsonValue {
        if matches!(self, SignIn::Browser) {
            params["for"] = json!("browser");
        }
        params
    }
}

fn check_password_len(password: &str) -> Result<()> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid_param("Password too long"));
    }
    Ok(())
}

impl Accounts {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn KvStore>,
        config: Arc<Config>,
        users: Arc<Users>,
        devices: Arc<Devices>,
        uiaa: Arc<Uiaa>,
        keys: Arc<Keys>,
        to_device: Arc<ToDevice>,
        key_backup: Arc<KeyBackup>,
        notifications: Arc<Notifications>,
        sliding_connections: Arc<Connections>,
        delayed_events: Arc<DelayedEvents>,
        audit: Arc<Audit>,
        registration_tokens: Arc<RegistrationTokens>,
        rate_limits: Arc<RateLimits>,
        appservices: Arc<Appservices>,
        logins: Logins,
        login_tokens: Arc<LoginTokens>,
    ) -> Self {
        let dehydrated = DEHYDRATED_DEVICES.open(&store);
        let sso_sessions = sso::SessionTables::open(&store);
        let cross_signing_resets = CROSS_SIGNING_RESETS.open(&store);
        Self {
            store,
            config,
            users,
            devices,
            uiaa,
            keys,
            to_device,
            key_backup,
            notifications,
            sliding_connections,
            delayed_events,
            audit,
            registration_tokens,
            rate_limits,
            appservices,
            dehydrated,
            logins,
            login_tokens,
            sso_sessions,
            cross_signing_resets,
        }
    }

    /// Queue removal of devices with their tokens, keys, pushers and waiting to-device
    /// messages. `None` removes every device but `keep`. Returns whether any device was removed (the
    /// caller then announces the device-list change, after committing).
    fn remove_devices_in(
        &self,
        guard: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        which: Option<&[OwnedDeviceId]>,
        keep: Option<&DeviceId>,
    ) -> Result<bool> {
        let existing: Vec<OwnedDeviceId> =
            self.devices.list(user_id)?.into_iter().map(|d| d.device_id).collect();
        let removed: Vec<OwnedDeviceId> = match which {
            Some(named) => existing.into_iter().filter(|d| named.contains(d)).collect(),
            None => existing.into_iter().filter(|d| Some(d.as_ref()) != keep).collect(),
        };
        // Pushers go with the devices that set them (those of unknown origin when every
        // other device goes).
        self.notifications.remove_device_pushers_in(
            batch,
            user_id,
            which.map(|_| removed.as_slice()),
            keep,
        )?;
        let dehydrated = self.dehydrated.get(&user_id.to_owned())?;
        for device_id in &removed {
            if dehydrated.as_ref().is_some_and(|d| d.device_id == *device_id) {
                self.dehydrated.delete(batch, &user_id.to_owned());
            }
            self.devices.remove_in(guard, batch, user_id, device_id)?;
            self.sso_sessions.forget_device_in(batch, user_id, device_id)?;
            self.keys.remove_device_in(batch, user_id, device_id)?;
            self.to_device.remove_device_in(batch, user_id, device_id)?;
            self.sliding_connections.forget_device(user_id, device_id);
        }
        Ok(!removed.is_empty())
    }

    /// After devices went: tell room mates to re-fetch the user's device list.
    fn devices_removed(&self, user_id: &UserId, removed: bool) -> Result<()> {
        if removed { self.keys.device_list_changed(user_id) } else { Ok(()) }
    }

    /// Under the device write lock, let `build` check what may have changed and fill one batch,
    /// then commit it. Every account write goes through here, so none can race a revocation;
    /// `build` is synchronous, so the lock is never held across an `.await`.
    fn write_locked<T>(
        &self,
        build: impl FnOnce(&WriteGuard<'_>, &mut WriteBatch) -> Result<T>,
    ) -> Result<T> {
        let guard = self.devices.write_lock()?;
        let mut batch = WriteBatch::new();
        let outcome = build(&guard, &mut batch)?;
        self.store.write(batch)?;
        Ok(outcome)
    }

    /// As `write_locked`, with the audit record of the write in the same batch: `entry` sees
    /// what `build` returned (to name the device it created, say).
    fn write_audited<T>(
        &self,
        context: &RequestContext,
        build: impl FnOnce(&WriteGuard<'_>, &mut WriteBatch) -> Result<T>,
        entry: impl FnOnce(&T) -> audit::Entry,
    ) -> Result<T> {
        let guard = self.devices.write_lock()?;
        let mut batch = WriteBatch::new();
        let outcome = build(&guard, &mut batch)?;
        let staged = self.audit.stage(&mut batch, context, entry(&outcome))?;
        self.store.write(batch)?;
        staged.committed();
        Ok(outcome)
    }

    fn ensure_registration_open(&self) -> Result<()> {
        if self.config.sso_only {
            return Err(Error::forbidden("Accounts are made by signing in with single sign-on"));
        }
        if !self.config.allow_registration {
            return Err(Error::forbidden("Registration has been disabled"));
        }
        Ok(())
    }

    /// `GET /register/m.login.registration_token/validity`.
    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        self.ensure_registration_open()?;
        self.registration_tokens.is_valid(token)
    }

    /// The user ID `localpart` would get, if it is valid and free.
    /// A user ID a person may register: valid, outside every appservice's exclusive
    /// namespace, and free.
    fn available_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        let user_id = self.registrable(localpart)?;
        self.appservices.ensure_user_not_exclusive(&user_id, None)?;
        if self.users.exists(&user_id)? {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
        }
        Ok(user_id)
    }

    /// The user ID `localpart` would get, if it is valid (taken or not).
    fn registrable(&self, localpart: &str) -> Result<OwnedUserId> {
        registrable_user_id(localpart, &self.config.server_name)
            .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))
    }

    /// `GET /register/available`. Refused while registration is closed, so it cannot be used
    /// to list accounts on a server that does not offer sign-up (as Synapse).
    pub fn username_available(&self, localpart: &str) -> Result<()> {
        self.ensure_registration_open()?;
        self.available_user_id(localpart).map(|_| ())
    }

    fn registration_flows(&self) -> Vec<AuthFlow> {
        let stage = if self.config.registration_needs_token() {
            AuthType::RegistrationToken
        } else {
            AuthType::Dummy
        };
        vec![AuthFlow::new(vec![stage])]
    }

    /// `POST /register` for a person (application services come later). The parameters are
    /// remembered by the user-interactive auth session, so a client may send them in its first
    /// request only (the password as its hash); a completed session retried answers the
    /// account it created, with a new login unless `inhibit_login`, as Synapse does.
    pub async fn register(
        &self,
        req: register::v3::Request,
        appservice: Option<&Arc<Registration>>,
        context: &RequestContext,
    ) -> Result<register::v3::Response> {
        if let Some(appservice) = appservice {
            return self.register_for_appservice(req, appservice, context);
        }
        if req.login_type == Some(register::LoginType::ApplicationService) {
            return Err(Error::missing_token());
        }
        if req.kind == register::RegistrationKind::Guest {
            return Err(Error::forbidden("Guest access is disabled"));
        }
        self.ensure_registration_open()?;
        let given = RegistrationParams::of(&req);
        devices::check_new_device(given.device_id.as_deref(), given.initial_device_display_name.as_deref())?;
        // Problems with a name are reported before authentication, so a client learns them at
        // once; the account a retried session already created is not one.
        if let Some(name) = &given.username {
            let user_id = self.registrable(name)?;
            self.appservices.ensure_user_not_exclusive(&user_id, None)?;
            let session = req.auth.as_ref().and_then(AuthData::session);
            let ours = match session {
                Some(session) => self.uiaa.registered_user(session)?.is_some_and(|u| u == user_id),
                None => false,
            };
            if !ours && self.users.exists(&user_id)? {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
            }
        }
        if let Some(password) = req.password.as_deref() {
            check_password_len(password)?;
        }
        let requirement = UiaaRequest {
            flows: self.registration_flows(),
            user: None,
            context,
            params: given.to_params()?,
            password: req.password.as_deref(),
            stage_params: serde_json::Map::new(),
        };
        let completed = self.uiaa.authenticate(&requirement, req.auth.as_ref()).await?;
        let params: RegistrationParams = serde_json::from_value(JsonValue::Object(completed.params))
            .map_err(|e| Error::bad_json(format!("Invalid registration parameters: {e}")))?;
        // Hashed once, now that the session is complete: the requests before it (the flow
        // probe clients start with) cost no argon2id run. A retry of a session that already
        // created its account needs no hash at all.
        let password_hash = match (&completed.password, self.uiaa.registered_user(&completed.session_id)?) {
            (Some(password), None) => {
                // An account is about to be made: counted per client address (refused
                // early, before the body is read, once the address is over the limit).
                self.rate_limits.check(Limiter::Registration, &context.client_ip, None)?;
                Some(self.users.hash_password(password).await?)
            }
            _ => None,
        };

        // The token stage's pending use becomes a completed one in the account's batch; the
        // token lock is held until it commits, so no other count change is lost.
        let token = self.uiaa.session_registration_token(&completed.session_id)?;
        let token_guard = match &token {
            Some(_) => Some(self.registration_tokens.write_lock()?),
            None => None,
        };
        let (user_id, issued, created) = self.write_audited(
            context,
            |guard, batch| {
                // Read under the lock: a retry racing the first completion sees its account.
                let (user_id, created) = match self.uiaa.registered_user(&completed.session_id)? {
                    Some(existing) => {
                        if params.username.as_deref().is_some_and(|name| name != existing.localpart()) {
                            return Err(Error::unknown(
                                "A different user ID has already been registered for this session",
                            ));
                        }
                        (existing, false)
                    }
                    None => {
                        // Checked after authentication: a client may probe the flows with an
                        // empty body.
                        // The hash is missing if the account appeared between the check above and
                        // this lock (a racing retry), which the branch above catches; or if no
                        // request of the session gave a password.
                        let hash = password_hash
                            .clone()
                            .ok_or_else(|| Error::missing_param("Missing params: password"))?;
                        let user_id = match &params.username {
                            // Checked again under the lock: the name may have been taken meanwhile.
                            Some(name) => self.available_user_id(name)?,
                            None => self.generate_user_id()?,
                        };
                        self.create_account_in(batch, &user_id, hash, false)?;
                        self.uiaa.set_registered_user_in(batch, &completed.session_id, &user_id)?;
                        if let (Some(token), Some(token_guard)) = (&token, &token_guard) {
                            self.registration_tokens.complete_in(token_guard, batch, token)?;
                        }
                        (user_id, true)
                    }
                };
                let issued = if params.inhibit_login {
                    None
                } else {
                    Some(self.devices.create_session_in(
                        guard,
                        batch,
                        &user_id,
                        params.device_id.clone(),
                        params.initial_device_display_name.clone(),
                        params.refresh_token,
                        context.client_ip.clone(),
                    )?)
                };
                Ok((user_id, issued, created))
            },
            |(user_id, issued, created)| {
                let device = issued.as_ref().map(|i| i.device_id.to_string());
                let action = if *created { "register" } else { "register.retry" };
                audit::Entry::success(action).target(user_id).params(json!({ "device_id": device }))
            },
        )?;
        drop(token_guard);
        if created {
            tracing::info!(%user_id, "registered account");
        }

        Ok(register_response(user_id, issued))
    }

    /// `POST /register` by an application service for a user in its namespace: no
    /// user-interactive auth, no password, open even while registration is closed (as
    /// Synapse); a device and token unless `inhibit_login`.
    fn register_for_appservice(
        &self,
        req: register::v3::Request,
        appservice: &Arc<Registration>,
        context: &RequestContext,
    ) -> Result<register::v3::Response> {
        let name = req.username.as_deref().ok_or_else(|| Error::missing_param("Missing params: username"))?;
        let user_id = self.registrable(name)?;
        if !appservice.may_act_as(&user_id) {
            return Err(Error::new(
                ErrorKind::Exclusive,
                "Invalid user localpart for this application service.",
            ));
        }
        devices::check_new_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let context = &acting_appservice(context, appservice);
        let issued = self.write_audited(
            context,
            |guard, batch| {
                if self.users.exists(&user_id)? {
                    return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
                }
                let displayname = Some(user_id.localpart().to_owned());
                self.users.create_in(batch, &user_id, None, false, displayname)?;
                if req.inhibit_login {
                    return Ok(None);
                }
                Ok(Some(self.devices.create_session_in(
                    guard,
                    batch,
                    &user_id,
                    req.device_id.clone(),
                    req.initial_device_display_name.clone(),
                    req.refresh_token,
                    context.client_ip.clone(),
                )?))
            },
            |issued| {
                let device = issued.as_ref().map(|i| i.device_id.to_string());
                audit::Entry::success("register")
                    .target(&user_id)
                    .params(json!({ "type": "m.login.application_service", "device_id": device }))
            },
        )?;
        tracing::info!(%user_id, appservice = %appservice.id, "registered application service user");
        Ok(register_response(user_id, issued))
    }

    /// Create the account of an application service's sender if it does not exist yet (at
    /// start-up and when a registration is added), as Synapse does, so the bot can join
    /// rooms and have a profile without registering itself. Answers whether it was created.
    pub fn ensure_appservice_sender(&self, appservice: &Registration) -> Result<bool> {
        if self.users.exists(&appservice.sender)? {
            return Ok(false);
        }
        let context = RequestContext::internal(Actor::Server, "application service registration");
        let user_id = &appservice.sender;
        self.write_audited(
            &context,
            |_, batch| {
                let displayname = Some(user_id.localpart().to_owned());
                self.users.create_in(batch, user_id, None, false, displayname)
            },
            |()| {
                audit::Entry::success("register")
                    .target(user_id)
                    .params(json!({ "type": "m.login.application_service", "appservice": appservice.id }))
            },
        )?;
        tracing::info!(user_id = %user_id, appservice = %appservice.id, "created the application service's sender");
        Ok(true)
    }

    /// Queue a new account whose display name starts as its localpart (as Synapse).
    fn create_account_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        password_hash: String,
        admin: bool,
    ) -> Result<()> {
        let displayname = Some(user_id.localpart().to_owned());
        self.users.create_in(batch, user_id, Some(password_hash), admin, displayname)
    }

    fn generate_user_id(&self) -> Result<OwnedUserId> {
        for _ in 0..16 {
            let candidate = random_string(12).to_lowercase();
            if let Ok(user_id) = registrable_user_id(&candidate, &self.config.server_name)
                && !self.users.exists(&user_id)?
            {
                return Ok(user_id);
            }
        }
        Err(Error::internal("could not generate a free user ID"))
    }

    /// Whether `user_id` is a live server admin.
    pub fn is_admin(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.users.get(user_id)?.is_some_and(|record| record.admin && !record.deactivated))
    }

    /// The admin flag of a local account (the admin API's view; the caller checked that
    /// the requester is an admin).
    pub fn admin_flag(&self, user_id: &UserId) -> Result<bool> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Only local users can be admins of this server"));
        }
        Ok(self.users.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))?.admin)
    }

    /// Grant or revoke the admin flag of a local account. An admin cannot revoke their own
    /// flag, so a server cannot lose its last admin by a slip (as Synapse refuses it).
    pub fn set_admin(&self, context: &RequestContext, user_id: &UserId, admin: bool) -> Result<()> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Only local users can be admins of this server"));
        }
        if context.actor.user_id().is_some_and(|actor| actor == user_id) && !admin {
            return Err(Error::invalid_param("You may not demote yourself"));
        }
        self.write_audited(
            context,
            |_, batch| self.users.set_admin_in(batch, user_id, admin),
            |_| audit::Entry::success("user.admin").target(user_id).params(json!({ "admin": admin })),
        )
    }

    /// Grant or revoke the admin flag from the command line (`conduit make-admin`): the
    /// operator acts, not a user, so there is no self-demotion to refuse. `name` is a
    /// localpart or a full user ID of an existing local account.
    pub fn set_admin_by_operator(&self, name: &str, admin: bool) -> Result<OwnedUserId> {
        let user_id = resolve_login_user(name, &self.config.server_name)
            .filter(|u| self.users.get(u).ok().flatten().is_some())
            .ok_or_else(|| Error::not_found("No such user"))?;
        let operator = RequestContext::internal(Actor::Operator, "make-admin");
        self.write_audited(
            &operator,
            |_, batch| self.users.set_admin_in(batch, &user_id, admin),
            |_| audit::Entry::success("user.admin").target(&user_id).params(json!({ "admin": admin })),
        )?;
        Ok(user_id)
    }

    /// Create an account from the command line, bypassing registration policy.
    pub async fn create_user(&self, localpart: &str, password: &str, admin: bool) -> Result<OwnedUserId> {
        check_password_len(password)?;
        let password_hash = self.users.hash_password(password).await?;
        let operator = RequestContext::internal(Actor::Operator, "create-user");
        self.write_audited(
            &operator,
            |_, batch| {
                let user_id = self.available_user_id(localpart)?;
                self.create_account_in(batch, &user_id, password_hash, admin)?;
                Ok(user_id)
            },
            |user_id| audit::Entry::success("user.create").target(user_id).params(json!({ "admin": admin })),
        )
    }

    /// Set a password from the command line; every device is logged out.
    pub async fn reset_password(&self, localpart: &str, password: &str) -> Result<OwnedUserId> {
        check_password_len(password)?;
        let user_id = resolve_login_user(localpart, &self.config.server_name)
            .filter(|u| self.users.get(u).ok().flatten().is_some_and(|r| !r.deactivated))
            .ok_or_else(|| Error::not_found("No such active user"))?;
        // Devices go with their keys, pushers and messages, as on every other path.
        self.set_password_by_admin(&user_id, password, true).await?;
        let operator = RequestContext::internal(Actor::Operator, "reset-password");
        let entry = audit::Entry::success("password.reset")
            .target(&user_id)
            .params(json!({ "logout_devices": true }));
        self.audit.record_or_log(&operator, entry);
        Ok(user_id)
    }

    /// Grant or revoke the admin flag from the command line.
    pub fn set_admin_offline(&self, name: &str, admin: bool) -> Result<OwnedUserId> {
        let user_id = resolve_login_user(name, &self.config.server_name)
            .filter(|u| self.users.get(u).ok().flatten().is_some())
            .ok_or_else(|| Error::not_found("No such user"))?;
        self.update_by_admin(&user_id, |r| r.admin = admin)?;
        Ok(user_id)
    }

    /// `POST /login`. Every failure to identify the account answers the same way, after the
    /// same work, so the endpoint does not reveal which accounts exist.
    pub async fn login(
        &self,
        req: login::v3::Request,
        appservice: Option<&Arc<Registration>>,
        context: &RequestContext,
    ) -> Result<login::v3::Response> {
        if let login::v3::LoginInfo::ApplicationService(info) = &req.login_info {
            let appservice = appservice.ok_or_else(Error::missing_token)?;
            #[allow(deprecated)]
            let claimed = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.as_str(),
                (Some(_), _) => {
                    return Err(Error::new(ErrorKind::Unknown, "Only m.id.user identifiers are supported"));
                }
                (None, Some(user)) => user.as_str(),
                (None, None) => return Err(Error::missing_param("Missing identifier")),
            };
            return self.login_for_appservice(&req, claimed, appservice, context);
        }
        if let login::v3::LoginInfo::Token(info) = &req.login_info {
            return self.login_with_token(&req, &info.token, context);
        }
        if req.login_info.login_type() == jwt_login::LOGIN_TYPE && self.logins.jwt.enabled() {
            return self.login_with_jwt(&req, context);
        }
        let login::v3::LoginInfo::Password(info) = &req.login_info else {
            return Err(Error::new(
                ErrorKind::Unknown,
                format!("Unknown login type {}", req.login_info.login_type()),
            ));
        };
        #[allow(deprecated)]
        let claimed = match (&info.identifier, &info.user) {
            (Some(UserIdentifier::Matrix(id)), _) => Some(id.user.as_str()),
            (Some(_), _) => {
                return Err(Error::new(ErrorKind::Unknown, "Only m.id.user identifiers are supported"));
            }
            (None, Some(user)) => Some(user.as_str()),
            (None, None) => return Err(Error::missing_param("Missing identifier")),
        };
        // Before the password is hashed: the answer does not depend on it.
        devices::check_new_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let (user_id, issued) =
            self.password_sign_in(claimed, &info.password, SignIn::Device(&req), context).await?;
        let issued = issued.ok_or_else(|| Error::internal("a device login made no device"))?;
        tracing::info!(%user_id, device_id = %issued.device_id, "logged in");
        Ok(login_response(user_id, issued))
    }

    /// A user signing in with their password on this server's own pages (the OAuth 2.0
    /// server's sign-in and account pages): the same checks, limits and directory as
    /// `m.login.password`, and no device; the answer is who they are.
    pub async fn browser_sign_in(
        &self,
        name: &str,
        password: &str,
        context: &RequestContext,
    ) -> Result<OwnedUserId> {
        Ok(self.password_sign_in(Some(name), password, SignIn::Browser, context).await?.0)
    }

    /// The password check of every password sign-in: limits, the directory first, then the
    /// local password, locks; then what `target` asks for, in the same write.
    async fn password_sign_in(
        &self,
        claimed: Option<&str>,
        password: &str,
        target: SignIn<'_>,
        context: &RequestContext,
    ) -> Result<(OwnedUserId, Option<IssuedTokens>)> {
        if self.config.sso_only {
            return Err(self.password_login_off(context, claimed));
        }
        let user_id = claimed.and_then(|c| resolve_login_user(c, &self.config.server_name));
        // Limited per account before the password is hashed, so a flood of guesses costs no
        // hashing once it is refused: the attempt takes a place among the failed ones now
        // and gives it back if the password was right. (Synapse keys on the user ID in
        // lower case; a name that is no user ID is counted as it was given.)
        let account_key = match &user_id {
            Some(id) => id.as_str().to_lowercase(),
            None => claimed.unwrap_or_default().to_lowercase(),
        };
        self.rate_limits.peek(Limiter::LoginAccount, &account_key, None)?;
        self.rate_limits.check(Limiter::LoginFailedAttempts, &account_key, None)?;
        // The directory is asked first; a name it does not know, or a password it refuses,
        // is then checked here, so local accounts keep working (as Synapse's LDAP module
        // with its local database on). Directory accounts have no password here.
        let ldap_unavailable = match &user_id {
            Some(id) => match self.login_with_ldap(id, password, &target, context, &account_key).await? {
                ldap_login::Attempt::SignedIn(user_id, issued) => return Ok((user_id, issued)),
                ldap_login::Attempt::NotHere => None,
                ldap_login::Attempt::Unavailable(error) => Some(error),
            },
            None => None,
        };
        // A missing account is checked too (against a decoy hash): same effort, same answer.
        let placeholder = || resolve_login_user("_", &self.config.server_name);
        let matched_hash = match user_id.clone().or_else(placeholder) {
            Some(id) => self.users.check_password(&id, password).await?,
            None => None,
        };
        let invalid = || Error::forbidden("Invalid username or password.");
        let (Some(matched_hash), Some(user_id)) = (matched_hash, user_id) else {
            let reason = match ldap_unavailable {
                Some(_) => "LDAP unavailable",
                None => "invalid username or password",
            };
            let entry = audit::Entry::failure("login")
                .params(target.mark(json!({ "type": "m.login.password", "reason": reason })));
            // The name as claimed: it may name no account.
            let entry = match claimed {
                Some(claimed) => entry.target(claimed),
                None => entry,
            };
            self.audit.record_or_log(context, entry);
            // While the directory is down, only a local password gets in; everyone else
            // learns why they did not (which says nothing of whether the name exists).
            return Err(ldap_unavailable.unwrap_or_else(invalid));
        };
        self.rate_limits.give_back(Limiter::LoginFailedAttempts, &account_key);
        self.rate_limits.check(Limiter::LoginAccount, &account_key, None)?;

        let issued = self.write_audited(
            context,
            |guard, batch| {
                // A deactivation or password change may have committed while the hash was checked.
                let current = self.users.get(&user_id)?;
                if !current
                    .as_ref()
                    .is_some_and(|u| !u.deactivated && u.password_hash.as_ref() == Some(&matched_hash))
                {
                    return Err(invalid());
                }
                // Only with the right password does a caller learn that the account is locked.
                if current.is_some_and(|u| u.locked) {
                    return Err(Error::new(ErrorKind::UserLocked, "User account has been locked"));
                }
                self.sign_in_session_in(guard, batch, &user_id, &target, context)
            },
            |issued| {
                let params = match issued {
                    Some(issued) => json!({ "type": "m.login.password", "device_id": issued.device_id }),
                    None => json!({ "type": "m.login.password" }),
                };
                audit::Entry::success("login").target(&user_id).params(target.mark(params))
            },
        )?;
        Ok((user_id, issued))
    }

    /// What a sign-in makes: a device with its tokens, or nothing (a browser sign-in).
    fn sign_in_session_in(
        &self,
        guard: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        target: &SignIn<'_>,
        context: &RequestContext,
    ) -> Result<Option<IssuedTokens>> {
        match target {
            SignIn::Device(req) => self.login_session_in(guard, batch, user_id, req, context).map(Some),
            SignIn::Browser => Ok(None),
        }
    }

    /// The device and tokens a login asks for (device ID, display name, refresh token).
    fn login_session_in(
        &self,
        guard: &WriteGuard<'_>,
        batch: &mut WriteBatch,
        user_id: &UserId,
        req: &login::v3::Request,
        context: &RequestContext,
    ) -> Result<IssuedTokens> {
        // A device logging in again is no longer the provider session it came from.
        if let Some(device_id) = &req.device_id {
            self.sso_sessions.forget_device_in(batch, user_id, device_id)?;
        }
        self.devices.create_session_in(
            guard,
            batch,
            user_id,
            req.device_id.clone(),
            req.initial_device_display_name.clone(),
            req.refresh_token,
            context.client_ip.clone(),
        )
    }

    /// `m.login.application_service`: a new device for a registered user in the
    /// appservice's namespace, without a password.
    fn login_for_appservice(
        &self,
        req: &login::v3::Request,
        claimed: &str,
        appservice: &Arc<Registration>,
        context: &RequestContext,
    ) -> Result<login::v3::Response> {
        devices::check_new_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let user_id = resolve_login_user(claimed, &self.config.server_name)
            .ok_or_else(|| Error::invalid_param("Not a user on this server"))?;
        if !appservice.may_act_as(&user_id) {
            return Err(Error::new(
                ErrorKind::Exclusive,
                "This user is not in the application service's namespace.",
            ));
        }
        let context = &acting_appservice(context, appservice);
        let issued = self.write_audited(
            context,
            |guard, batch| {
                match self.users.get(&user_id)? {
                    Some(user) if !user.deactivated => {}
                    _ => return Err(Error::forbidden("Invalid username or password.")),
                }
                self.login_session_in(guard, batch, &user_id, req, context)
            },
            |issued| {
                audit::Entry::success("login")
                    .target(&user_id)
                    .params(json!({ "type": "m.login.application_service", "device_id": issued.device_id }))
            },
        )?;
        Ok(login_response(user_id, issued))
    }

    /// Re-authenticate the signed-in user by password (user-interactive auth) for a
    /// sensitive request, bound to the request and its parameters.
    async fn reauthenticate(
        &self,
        who: &DeviceIdentity,
        context: &RequestContext,
        params: JsonValue,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        let JsonValue::Object(params) = params else {
            return Err(Error::internal("request parameters must be a JSON object"));
        };
        let requirement = UiaaRequest {
            flows: self.reauthentication_flows(&who.user_id)?,
            user: Some(&who.user_id),
            context,
            params,
            password: None,
            stage_params: serde_json::Map::new(),
        };
        self.uiaa.authenticate(&requirement, auth).await.map(|_| ())
    }

    /// Make the user authenticate again with their password before their cross-signing keys
    /// are replaced (an identity reset), bound to the keys being uploaded.
    pub async fn reauthenticate_cross_signing(
        &self,
        who: &DeviceIdentity,
        context: &RequestContext,
        upload: &CrossSigningUpload,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        let mut params = serde_json::Map::new();
        let keys = [
            ("master_key", &upload.master),
            ("self_signing_key", &upload.self_signing),
            ("user_signing_key", &upload.user_signing),
        ];
        for (name, key) in keys {
            if let Some(key) = key {
                params.insert(name.to_owned(), key.clone());
            }
        }
        // Approved on the account page (the `m.oauth` stage, or an admin): no more to ask.
        if self.cross_signing_reset_allowed(&who.user_id)? {
            return Ok(());
        }
        if let Some((flows, stage_params)) = self.oauth_reset_stages(who)? {
            let requirement = UiaaRequest {
                flows,
                user: Some(&who.user_id),
                context,
                params,
                password: None,
                stage_params,
            };
            return self.uiaa.authenticate(&requirement, auth).await.map(|_| ());
        }
        self.reauthenticate(who, context, JsonValue::Object(params), auth).await
    }

    /// `POST /account/password`.
    pub async fn change_password(
        &self,
        who: &DeviceIdentity,
        context: &RequestContext,
        req: change_password::v3::Request,
    ) -> Result<change_password::v3::Response> {
        if self.config.sso_only {
            return Err(Error::forbidden(
                "Passwords are not used on this server: sign in with single sign-on",
            ));
        }
        self.ensure_password_kept_here(&who.user_id)?;
        check_password_len(&req.new_password)?;
        // The new password is a secret: it is not kept in the session, nor bound.
        let params = json!({ "logout_devices": req.logout_devices });
        self.reauthenticate(who, context, params, req.auth.as_ref()).await?;
        let hash = self.users.hash_password(&req.new_password).await?;
        let removed = self.write_audited(
            context,
            |guard, batch| {
                self.users.set_password_hash_in(batch, &who.user_id, hash)?;
                if req.logout_devices {
                    return self.remove_devices_in(guard, batch, &who.user_id, None, Some(&who.device_id));
                }
                Ok(false)
            },
            |_| {
                audit::Entry::success("password.change")
                    .target(&who.user_id)
                    .params(json!({ "logout_devices": req.logout_devices }))
            },
        )?;
        self.devices_removed(&who.user_id, removed)?;
        Ok(change_password::v3::Response::new())
    }

    /// `POST /account/deactivate`: the account can never log in again and its name stays taken.
    pub async fn deactivate(
        &self,
        who: &DeviceIdentity,
        context: &RequestContext,
        req: deactivate::v3::Request,
    ) -> Result<deactivate::v3::Response> {
        let params = json!({ "erase": req.erase, "id_server": req.id_server });
        self.reauthenticate(who, context, params, req.auth.as_ref()).await?;
        self.deactivate_account(&who.user_id, req.erase)?;
        let entry = audit::Entry::success("account.deactivate")
            .target(&who.user_id)
            .params(json!({ "erase": req.erase }));
        self.audit.record_or_log(context, entry);
        // No third-party identifiers are ever bound here, so there is nothing to unbind.
        Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::Success))
    }

    /// Deactivate an account, by its owner or an admin: its devices (hidden ones too), key
    /// backup and delayed events go; with `erase`, its profile too.
    pub fn deactivate_account(&self, user_id: &UserId, erase: bool) -> Result<()> {
        let removed = self.write_locked(|guard, batch| {
            self.users.deactivate_in(batch, user_id, erase)?;
            // Nobody can ever restore these keys: the account cannot log in again.
            self.key_backup.remove_user_in(batch, user_id)?;
            self.remove_devices_in(guard, batch, user_id, None, None)
        })?;
        self.devices_removed(user_id, removed)?;
        // Nothing is sent in a deactivated account's name any more (Synapse cancels them too).
        self.delayed_events.cancel_all_for_user(user_id)?;
        tracing::info!(%user_id, erase, "deactivated account");
        Ok(())
    }

    /// Admin API: a local account's record, or 404.
    pub fn local_account(&self, user_id: &UserId, what: &str) -> Result<crate::storage::tables::UserRecord> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param(format!("Can only {what} local users")));
        }
        self.users.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))
    }

    /// Admin API: create an account with the name an admin chose (registration policy does
    /// not apply). Without a password it cannot log in until one is set.
    pub async fn create_by_admin(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        admin: bool,
        displayname: Option<String>,
        user_type: Option<String>,
    ) -> Result<()> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("This endpoint can only be used with local users"));
        }
        self.registrable(user_id.localpart())?;
        let hash = match password {
            Some(password) => {
                check_password_len(password)?;
                Some(self.users.hash_password(password).await?)
            }
            None => None,
        };
        self.write_locked(|_, batch| {
            if self.users.exists(user_id)? {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
            }
            let displayname = displayname.or_else(|| Some(user_id.localpart().to_owned()));
            self.users.create_in(batch, user_id, hash, admin, displayname)?;
            Ok(())
        })?;
        if user_type.is_some() {
            self.update_by_admin(user_id, |r| r.user_type = user_type)?;
        }
        tracing::info!(%user_id, "account created by an admin");
        Ok(())
    }

    /// Admin API: set a user's password; with `logout_devices`, every device goes (hidden
    /// ones too).
    pub async fn set_password_by_admin(
        &self,
        user_id: &UserId,
        password: &str,
        logout_devices: bool,
    ) -> Result<()> {
        // A password set here would let a directory account in after it left the directory.
        self.ensure_password_kept_here(user_id)?;
        check_password_len(password)?;
        let hash = self.users.hash_password(password).await?;
        let removed = self.write_locked(|guard, batch| {
            self.users.set_password_hash_in(batch, user_id, hash)?;
            if logout_devices {
                return self.remove_devices_in(guard, batch, user_id, None, None);
            }
            Ok(false)
        })?;
        self.devices_removed(user_id, removed)
    }

    /// Admin API: change an account's flags (admin, locked, suspended, shadow-banned, user
    /// type, reactivation).
    pub fn update_by_admin(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut crate::storage::tables::UserRecord),
    ) -> Result<crate::storage::tables::UserRecord> {
        self.write_locked(|_, batch| self.users.update_in(batch, user_id, change))
    }

    /// Admin API "login as": a token for a new hidden device of `user_id` (left out of the
    /// user's device list, as Synapse's puppet tokens belong to no device of theirs), valid
    /// until `valid_until_ms` if given.
    pub fn login_as(&self, actor: &UserId, user_id: &UserId, valid_until_ms: Option<u64>) -> Result<String> {
        if user_id.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Only local users can be logged in as"));
        }
        let record = self.users.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        if actor == user_id {
            return Err(Error::invalid_param("Cannot use admin API to login as self"));
        }
        if record.deactivated {
            return Err(Error::invalid_param("Cannot log in as a deactivated user"));
        }
        let issued = self.write_locked(|guard, batch| {
            self.devices.create_hidden_session_in(guard, batch, user_id, valid_until_ms)
        })?;
        tracing::info!(%actor, %user_id, device_id = %issued.device_id, "admin logged in as user");
        Ok(issued.access_token)
    }

    /// Admin API: remove devices of a user without re-authentication. Unknown IDs are
    /// skipped.
    pub fn delete_devices_by_admin(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        let removed = self.write_locked(|guard, batch| {
            self.remove_devices_in(guard, batch, user_id, Some(device_ids), None)
        })?;
        self.devices_removed(user_id, removed)
    }

    /// `DELETE /devices/{id}` and `POST /delete_devices`: after password re-authentication,
    /// remove the devices and their tokens. Unknown device IDs are skipped.
    /// `DELETE /devices/{deviceId}` and `POST /delete_devices`: with user-interactive auth,
    /// except for an application service (spec 1.17, MSC4190), which manages its users'
    /// devices with its own token.
    pub async fn delete_devices(
        &self,
        caller: &Caller,
        context: &RequestContext,
        device_ids: &[OwnedDeviceId],
        auth: Option<&AuthData>,
    ) -> Result<()> {
        if caller.appservice.is_none() {
            let who = caller.device_identity()?;
            self.reauthenticate(&who, context, json!({ "devices": device_ids }), auth).await?;
        }
        let user_id = &caller.user_id;
        let removed = self.write_audited(
            context,
            |guard, batch| self.remove_devices_in(guard, batch, user_id, Some(device_ids), None),
            |_| {
                audit::Entry::success("device.delete")
                    .target(user_id)
                    .params(json!({ "devices": device_ids }))
            },
        )?;
        self.devices_removed(user_id, removed)
    }

    /// `PUT /devices/{deviceId}` naming a device the user does not have, from an application
    /// service (spec 1.17, MSC4190): the device is created without an access token (the
    /// appservice acts for it with its own token and `device_id`), and the user's room mates
    /// are told the device list changed.
    pub fn create_appservice_device(
        &self,
        context: &RequestContext,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        self.write_audited(
            context,
            |guard, batch| self.devices.add_tokenless_in(guard, batch, user_id, device_id, display_name),
            |_| {
                audit::Entry::success("device.create")
                    .target(user_id)
                    .params(json!({ "device_id": device_id }))
            },
        )?;
        self.keys.device_list_changed(user_id)
    }

    /// `PUT /devices/{deviceId}`: rename a device. A new name is part of the device's keys
    /// as others see them (`unsigned.device_display_name`), so the user's device list
    /// changes, for local room mates' syncs and for other servers, as in Synapse.
    pub fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<String>) -> Result<()> {
        if self.devices.set_display_name(user_id, device_id, name)? {
            self.keys.device_list_changed(user_id)?;
        }
        Ok(())
    }

    /// `PUT /dehydrated_device` (MSC3814): create the user's dehydrated device — a device
    /// without a token that holds keys and receives to-device messages while every client
    /// is offline — replacing (and deleting) any previous one. Returns its device ID.
    pub fn put_dehydrated_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
        device_data: Box<serde_json::value::RawValue>,
        keys: crate::service::keys::Upload,
    ) -> Result<()> {
        let previous = self.dehydrated.get(&user_id.to_owned())?;
        self.write_locked(|guard, batch| {
            if let Some(previous) = &previous {
                self.remove_devices_in(
                    guard,
                    batch,
                    user_id,
                    Some(std::slice::from_ref(&previous.device_id)),
                    None,
                )?;
            }
            self.devices.add_tokenless_in(guard, batch, user_id, device_id, display_name)?;
            let record = DehydratedDeviceRecord { device_id: device_id.to_owned(), device_data };
            Ok(self.dehydrated.put(batch, &user_id.to_owned(), &record)?)
        })?;
        // The device exists now, so its keys can be uploaded like any device's (which checks
        // them and announces the device-list change).
        self.keys.upload(user_id, device_id, keys)?;
        if previous.is_some() {
            self.keys.device_list_changed(user_id)?;
        }
        Ok(())
    }

    /// The user's dehydrated device, if any.
    pub fn dehydrated_device(&self, user_id: &UserId) -> Result<Option<DehydratedDeviceRecord>> {
        Ok(self.dehydrated.get(&user_id.to_owned())?)
    }

    /// `DELETE /dehydrated_device`: the device, its keys and messages go. Returns its ID.
    pub fn delete_dehydrated_device(&self, user_id: &UserId) -> Result<OwnedDeviceId> {
        let record = self
            .dehydrated
            .get(&user_id.to_owned())?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        let removed = self.write_locked(|guard, batch| {
            self.dehydrated.delete(batch, &user_id.to_owned());
            self.remove_devices_in(guard, batch, user_id, Some(std::slice::from_ref(&record.device_id)), None)
        })?;
        self.devices_removed(user_id, removed)?;
        Ok(record.device_id)
    }

    /// `POST /logout`: this device and its tokens go.
    pub fn logout(&self, context: &RequestContext, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let devices = [device_id.to_owned()];
        let removed = self.write_audited(
            context,
            |guard, batch| self.remove_devices_in(guard, batch, user_id, Some(&devices), None),
            |_| audit::Entry::success("logout").target(user_id).params(json!({ "device_id": device_id })),
        )?;
        self.devices_removed(user_id, removed)
    }

    /// `GET /admin/whois/{userId}`: the user's devices, each as one session (a device holds
    /// one live access token) with one connection, its last sighting. Users may look
    /// themselves up; only server admins may look up others, and only local users.
    pub fn whois(&self, requester: &UserId, target: &UserId) -> Result<get_user_info::v3::Response> {
        if requester != target && !self.users.get(requester)?.is_some_and(|u| u.admin) {
            return Err(Error::forbidden("You are not a server admin"));
        }
        if target.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Can only whois a local user"));
        }
        let mut response = get_user_info::v3::Response::new();
        response.user_id = Some(target.to_owned());
        for device in self.devices.list_visible(target)? {
            let mut session = SessionInfo::new();
            if device.last_seen_ip.is_some() || device.last_seen_ms.is_some() {
                let mut connection = ConnectionInfo::new();
                connection.ip = device.last_seen_ip;
                connection.last_seen =
                    device.last_seen_ms.map(|ms| MilliSecondsSinceUnixEpoch(UInt::new_saturating(ms)));
                connection.user_agent = device.last_seen_user_agent;
                session.connections.push(connection);
            }
            let mut info = DeviceInfo::new();
            info.sessions.push(session);
            response.devices.insert(device.device_id.to_string(), info);
        }
        Ok(response)
    }

    /// `POST /logout/all`: every device of the user goes.
    pub fn logout_all(&self, context: &RequestContext, user_id: &UserId) -> Result<()> {
        let removed = self.write_audited(
            context,
            |guard, batch| self.remove_devices_in(guard, batch, user_id, None, None),
            |_| audit::Entry::success("logout.all").target(user_id),
        )?;
        self.devices_removed(user_id, removed)
    }
}
