//! The single sign-on side of accounts: `m.login.token` logins with one-time tokens, the
//! tokens `POST /login/get_token` makes, the account an identity-provider user signs in to
//! (linked, existing or new), the stages re-authentication offers, and the devices each
//! provider session signed in, which back-channel logout ends. Owns the `sso_sessions` and
//! `sso_sessions_by_device` tables.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedUserId, UserId,
    api::{
        client::{
            session::login,
            uiaa::{AuthData, AuthFlow, AuthType},
        },
        error::ErrorKind,
    },
};
use serde_json::json;

use super::{Accounts, login_response};
use crate::{
    Error, Result,
    service::{
        audit,
        context::RequestContext,
        devices::{self, DeviceIdentity},
        oidc::Identity,
        rate_limits::Limiter,
        uiaa::UiaaRequest,
        users::Users,
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{SSO_SESSIONS, SSO_SESSIONS_BY_DEVICE, SsoSessionRecord},
    },
};

/// What a provider allows on a first sign-in (its `allow_existing_users` and
/// `enable_registration`).
#[derive(Clone, Copy, Debug)]
pub struct SsoPolicy {
    pub allow_existing_users: bool,
    pub enable_registration: bool,
}

type SessionKey = (String, String, String, (OwnedUserId, OwnedDeviceId));

/// The devices provider sessions signed in: by (provider, subject, session), and by device.
pub(super) struct SessionTables {
    by_session: Table<SessionKey, u64>,
    by_device: Table<(OwnedUserId, OwnedDeviceId), SsoSessionRecord>,
}

impl SessionTables {
    pub(super) fn open(store: &Arc<dyn KvStore>) -> Self {
        Self { by_session: SSO_SESSIONS.open(store), by_device: SSO_SESSIONS_BY_DEVICE.open(store) }
    }

    pub(super) fn record_in(
        &self,
        batch: &mut WriteBatch,
        session: &SsoSessionRecord,
        user_id: &UserId,
        device_id: &DeviceId,
        now_ms: u64,
    ) -> Result<()> {
        let device = (user_id.to_owned(), device_id.to_owned());
        let key = (session.idp_id.clone(), session.subject.clone(), session.sid.clone(), device.clone());
        self.by_session.put(batch, &key, &now_ms)?;
        Ok(self.by_device.put(batch, &device, session)?)
    }

    /// Queue the removal of the device's provider session, if it has one.
    pub(super) fn forget_device_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        let device = (user_id.to_owned(), device_id.to_owned());
        if let Some(session) = self.by_device.get(&device)? {
            self.by_device.delete(batch, &device);
            self.by_session.delete(batch, &(session.idp_id, session.subject, session.sid, device));
        }
        Ok(())
    }

    /// The devices a provider session (or every session of a subject, or with `sid` alone,
    /// that session whoever its subject) signed in.
    fn devices(
        &self,
        idp_id: &str,
        subject: Option<&str>,
        sid: Option<&str>,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>> {
        let rows: Vec<(SessionKey, u64)> = match (subject, sid) {
            (Some(subject), Some(sid)) => self
                .by_session
                .scan_prefix(&(idp_id.to_owned(), subject.to_owned(), sid.to_owned()), Direction::Forward)?
                .collect::<Result<_, _>>()?,
            (Some(subject), None) => self
                .by_session
                .scan_prefix(&(idp_id.to_owned(), subject.to_owned()), Direction::Forward)?
                .collect::<Result<_, _>>()?,
            (None, _) => self
                .by_session
                .scan_prefix(&idp_id.to_owned(), Direction::Forward)?
                .collect::<Result<_, _>>()?,
        };
        Ok(rows
            .into_iter()
            .filter(|((_, _, row_sid, _), _)| sid.is_none_or(|sid| row_sid == sid))
            .map(|((_, _, _, device), _)| device)
            .collect())
    }
}

impl Accounts {
    /// `POST /login` with `m.login.token`: the token is used up whatever happens next.
    pub(super) fn login_with_token(
        &self,
        req: &login::v3::Request,
        token: &str,
        context: &RequestContext,
    ) -> Result<login::v3::Response> {
        devices::check_new_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let record = match self.login_tokens.take(token) {
            Ok(record) => record,
            Err(error) => {
                let entry = audit::Entry::failure("login")
                    .params(json!({ "type": "m.login.token", "reason": "invalid login token" }));
                self.audit.record_or_log(context, entry);
                return Err(error);
            }
        };
        let user_id = record.user_id;
        let sso = record.sso;
        let now = self.login_tokens.now_ms();
        let issued = self.write_audited(
            context,
            |guard, batch| {
                let record = self.users.get(&user_id)?;
                if record.is_none() {
                    return Err(Error::forbidden("Invalid login token"));
                }
                Users::ensure_may_log_in(record.as_ref())?;
                let issued = self.login_session_in(guard, batch, &user_id, req, context)?;
                if let Some(session) = &sso {
                    self.sso_sessions.record_in(batch, session, &user_id, &issued.device_id, now)?;
                }
                Ok(issued)
            },
            |issued| {
                let mut params = json!({ "type": "m.login.token", "device_id": issued.device_id });
                if let Some(session) = &sso {
                    params["idp_id"] = json!(session.idp_id);
                    params["subject"] = json!(session.subject);
                }
                audit::Entry::success("login").target(&user_id).params(params)
            },
        )?;
        tracing::info!(%user_id, device_id = %issued.device_id, sso = sso.is_some(), "logged in with a login token");
        Ok(login_response(user_id, issued))
    }

    /// `POST /login/get_token`: a one-time token for the signed-in user, valid for the
    /// configured `token_timeout`, after re-authentication each time (the spec: "servers MUST
    /// always re-prompt"), so a completed session is used up. Counted against the account's
    /// login limit. `404 M_UNRECOGNIZED` while `login_via_existing_session` is off, as on
    /// Synapse.
    pub async fn get_login_token(
        &self,
        who: &DeviceIdentity,
        context: &RequestContext,
        auth: Option<&AuthData>,
    ) -> Result<(String, Duration)> {
        let settings = &self.config.login_via_existing_session;
        if !settings.enabled {
            return Err(Error::unrecognized("Unrecognized request"));
        }
        if settings.require_ui_auth {
            let requirement = UiaaRequest {
                flows: self.reauthentication_flows(&who.user_id)?,
                user: Some(&who.user_id),
                context,
                params: serde_json::Map::new(),
                password: None,
                stage_params: serde_json::Map::new(),
            };
            let completed = self.uiaa.authenticate(&requirement, auth).await?;
            self.uiaa.forget(&completed.session_id)?;
        }
        self.rate_limits.check(Limiter::LoginAccount, who.user_id.as_str(), None)?;
        let lifetime = settings.token_timeout.as_duration();
        let token = self.login_tokens.issue(&who.user_id, lifetime, None)?;
        let entry = audit::Entry::success("login_token.issue")
            .target(&who.user_id)
            .params(json!({ "device_id": who.device_id, "expires_in_ms": lifetime.as_millis() as u64 }));
        self.audit.record_or_log(context, entry);
        Ok((token, lifetime))
    }

    /// The stages a user may re-authenticate with: their password, local or the directory's
    /// (unless passwords are off), and single sign-on when their account is linked to a configured provider, as
    /// Synapse offers them. A user with neither is asked for a password, which fails.
    pub(super) fn reauthentication_flows(&self, user_id: &UserId) -> Result<Vec<AuthFlow>> {
        let mut flows = Vec::new();
        // A directory account's password is checked by the directory.
        let has_password = self.users.get(user_id)?.is_some_and(|u| u.password_hash.is_some())
            || self.password_managed_elsewhere(user_id)?;
        if has_password && !self.config.sso_only {
            flows.push(AuthFlow::new(vec![AuthType::Password]));
        }
        if self.sso_providers_of(user_id)?.next().is_some() {
            flows.push(AuthFlow::new(vec![AuthType::Sso]));
        }
        if flows.is_empty() {
            flows.push(AuthFlow::new(vec![AuthType::Password]));
        }
        Ok(flows)
    }

    /// The configured providers a user's account is linked to, in configuration order.
    pub fn sso_providers_of(&self, user_id: &UserId) -> Result<impl Iterator<Item = String> + use<>> {
        let linked: Vec<String> = self.users.external_ids(user_id)?.into_iter().map(|(idp, _)| idp).collect();
        let configured: Vec<String> = self.config.identity_providers.iter().map(|p| p.id.clone()).collect();
        Ok(configured.into_iter().filter(move |id| linked.contains(id)))
    }

    /// A password login while passwords are off: refused and recorded.
    pub(super) fn password_login_off(&self, context: &RequestContext, claimed: Option<&str>) -> Error {
        let entry = audit::Entry::failure("login")
            .params(json!({ "type": "m.login.password", "reason": "password login is off (sso_only)" }));
        let entry = match claimed {
            Some(claimed) => entry.target(claimed),
            None => entry,
        };
        self.audit.record_or_log(context, entry);
        Error::forbidden("Password login is turned off on this server: sign in with single sign-on")
    }

    /// The account an identity-provider user signs in to: the one their provider account is
    /// linked to; else, on a first sign-in, the account the mapping names — an existing one
    /// (linked now, only with `allow_existing_users`) or a new one (with
    /// `enable_registration`; no password, display name and email from the mapping). Links
    /// and new accounts are written with their audit records.
    pub fn sso_account(
        &self,
        context: &RequestContext,
        identity: &Identity,
        policy: SsoPolicy,
    ) -> Result<OwnedUserId> {
        let deactivated = || Error::new(ErrorKind::UserDeactivated, "This account has been deactivated");
        if let Some(link) = self.users.by_external_id(&identity.idp_id, &identity.subject)? {
            if self.users.get(&link.user_id)?.is_none_or(|u| u.deactivated) {
                return Err(deactivated());
            }
            return Ok(link.user_id);
        }
        if identity.localpart.is_empty() {
            return Err(Error::forbidden(format!(
                "{} gave no user name for your account, so no account can be made for it.",
                identity.idp_name
            )));
        }
        let user_id = self.registrable(&identity.localpart).map_err(|e| match e {
            Error::Matrix { message, .. } => Error::forbidden(format!(
                "The user name {:?} that {} gave cannot be a Matrix user name: {message}",
                identity.localpart, identity.idp_name
            )),
            other => other,
        })?;
        let entry_params =
            json!({ "type": "m.login.sso", "idp_id": identity.idp_id, "subject": identity.subject });
        if self.users.exists(&user_id)? {
            if !policy.allow_existing_users {
                return Err(Error::new(
                    ErrorKind::UserInUse,
                    format!(
                        "An account named {user_id} already exists, and it is not linked to your {} account.",
                        identity.idp_name
                    ),
                ));
            }
            self.write_audited(
                context,
                |_, batch| {
                    if self.users.get(&user_id)?.is_none_or(|u| u.deactivated) {
                        return Err(deactivated());
                    }
                    self.link_in(batch, identity, &user_id)
                },
                |_| audit::Entry::success("sso.link").target(&user_id).params(entry_params.clone()),
            )?;
            tracing::info!(%user_id, idp = %identity.idp_id, "linked an existing account to its identity provider account");
            return Ok(user_id);
        }
        if !policy.enable_registration {
            return Err(Error::forbidden(format!(
                "No account is linked to your {} account, and this server makes no accounts for it.",
                identity.idp_name
            )));
        }
        self.appservices.ensure_user_not_exclusive(&user_id, None)?;
        self.write_audited(
            context,
            |_, batch| {
                // Taken meanwhile (a racing first sign-in, a registration).
                if self.users.exists(&user_id)? {
                    return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
                }
                let displayname =
                    identity.display_name.clone().or_else(|| Some(user_id.localpart().to_owned()));
                self.users.create_in(batch, &user_id, None, false, displayname)?;
                self.link_in(batch, identity, &user_id)
            },
            |_| audit::Entry::success("register").target(&user_id).params(entry_params.clone()),
        )?;
        tracing::info!(%user_id, idp = %identity.idp_id, "created an account on its first single sign-on");
        Ok(user_id)
    }

    /// Queue the link from the provider account to `user_id`, and the mapped email address
    /// onto the account as a verified one (as the directory's are).
    fn link_in(&self, batch: &mut WriteBatch, identity: &Identity, user_id: &UserId) -> Result<()> {
        self.users.link_external_id_in(
            batch,
            &identity.idp_id,
            &identity.subject,
            user_id,
            identity.email.clone(),
        )?;
        if let Some(email) = &identity.email {
            self.logins.threepids.add_verified_email_in(batch, user_id, email)?;
        }
        Ok(())
    }

    /// Back-channel logout: remove the devices a provider session (or every session of a
    /// subject) signed in, with their tokens, keys and pushers. Returns how many went.
    pub fn end_sso_sessions(
        &self,
        context: &RequestContext,
        idp_id: &str,
        subject: Option<&str>,
        sid: Option<&str>,
    ) -> Result<usize> {
        let mut by_user: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = BTreeMap::new();
        for (user_id, device_id) in self.sso_sessions.devices(idp_id, subject, sid)? {
            by_user.entry(user_id).or_default().push(device_id);
        }
        let mut ended = 0;
        for (user_id, device_ids) in by_user {
            let removed = self.write_audited(
                context,
                |guard, batch| {
                    // Rows of devices already gone go too.
                    for device_id in &device_ids {
                        self.sso_sessions.forget_device_in(batch, &user_id, device_id)?;
                    }
                    self.remove_devices_in(guard, batch, &user_id, Some(&device_ids), None)
                },
                |_| {
                    audit::Entry::success("logout").target(&user_id).params(json!({
                        "type": "backchannel_logout",
                        "idp_id": idp_id,
                        "devices": device_ids,
                    }))
                },
            )?;
            self.devices_removed(&user_id, removed)?;
            ended += device_ids.len();
            tracing::info!(%user_id, idp = %idp_id, devices = device_ids.len(), "ended sessions by back-channel logout");
        }
        Ok(ended)
    }
}
