//! User-interactive authentication, done once for every endpoint that needs it: sessions,
//! completed stages, the 401 body with `flows`/`params`/`session`, and stage checks. Each
//! session is bound to the request that started it — user, method, path and parameters — so
//! authenticating one operation never authorises another. Owns the `uiaa_sessions` table.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{
    OwnedUserId, UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
};
use serde_json::{Value as JsonValue, value::to_raw_value};

use super::{
    clock::Clock,
    context::RequestContext,
    ldap::{Check, Ldap},
    passwords::random_string,
    registration_tokens::{Accepted, RegistrationTokens},
    users::Users,
};
use crate::{
    Error, Result,
    matrix::user_id::resolve_login_user,
    storage::{
        KvStore, Table, WriteBatch,
        tables::{UIAA_SESSIONS, UiaaSessionRecord},
    },
};

/// Parameters of a request: its JSON body without `auth` and without secrets.
pub type Params = serde_json::Map<String, JsonValue>;

/// What an endpoint demands, and the request it guards.
pub struct UiaaRequest<'a> {
    pub flows: Vec<AuthFlow>,
    /// The authenticated user, for endpoints called with an access token.
    pub user: Option<&'a UserId>,
    /// The request: a session started for one method and path serves no other.
    pub context: &'a RequestContext,
    /// The operation's parameters, without secrets (passwords). A later request of the same
    /// session may leave parameters out (they are remembered) or add new ones, but may not
    /// change one already given: that would be another operation.
    pub params: Params,
    /// Registration: a password this request gave, remembered for the session (in memory
    /// only) so the client need not send it again.
    pub password: Option<&'a str>,
    /// The `params` of the 401 answer, by stage (`m.oauth`'s URL); empty for most.
    pub stage_params: serde_json::Map<String, serde_json::Value>,
}

/// A completed authentication: what the session remembers of its requests.
#[derive(Debug)]
pub struct Completed {
    pub session_id: String,
    /// The parameters given over the session's requests, merged.
    pub params: Params,
    /// Registration: the latest password given in the session.
    pub password: Option<String>,
}

/// Most registration passwords remembered at once; past it, a session's password is not
/// remembered and its client must send it again when it completes the session.
const MAX_REMEMBERED_PASSWORDS: usize = 10_000;

pub struct Uiaa {
    sessions: Table<String, UiaaSessionRecord>,
    /// Registration passwords given before their session completed, by session, with their
    /// expiry: hashing one costs as much as an argon2id run, so it is hashed once, when the
    /// account is created, and it is never written to disk in the clear. Lost on restart,
    /// when a client completing such a session must send its password again.
    passwords: Mutex<HashMap<String, (String, u64)>>,
    users: Arc<Users>,
    clock: Arc<dyn Clock>,
    registration_tokens: Arc<RegistrationTokens>,
    /// Password stages of directory accounts are checked by the directory.
    ldap: Arc<Ldap>,
    session_lifetime_ms: u64,
}

impl Uiaa {
    pub fn new(
        store: &Arc<dyn KvStore>,
        users: Arc<Users>,
        clock: Arc<dyn Clock>,
        registration_tokens: Arc<RegistrationTokens>,
        ldap: Arc<Ldap>,
        session_lifetime_secs: u64,
    ) -> Self {
        Self {
            sessions: UIAA_SESSIONS.open(store),
            passwords: Mutex::new(HashMap::new()),
            users,
            clock,
            registration_tokens,
            ldap,
            session_lifetime_ms: session_lifetime_secs.saturating_mul(1000),
        }
    }

    /// The stored registration token whose pending use the session holds, if any.
    pub fn session_registration_token(&self, session_id: &str) -> Result<Option<String>> {
        Ok(self.sessions.get(&session_id.to_owned())?.and_then(|r| r.registration_token))
    }

    /// Advance authentication with the request's `auth`. `Ok` once a flow is complete;
    /// otherwise `Error::Uiaa` with what the client must do next. A session used for another
    /// request than the one it was started for, or by another user, is refused with 403.
    pub async fn authenticate(&self, req: &UiaaRequest<'_>, auth: Option<&AuthData>) -> Result<Completed> {
        let now = self.clock.now_ms();
        let Some(auth) = auth else {
            let (session_id, record) = self.start(req, now)?;
            self.remember_password(&session_id, req.password, record.expires_ms);
            return Err(self.challenge(req, &session_id, &record, None));
        };

        let (session_id, record) = match auth.session() {
            Some(id) => {
                let stored = self
                    .sessions
                    .get(&id.to_owned())?
                    .filter(|r| r.expires_ms > now)
                    .ok_or_else(|| Error::new(ErrorKind::Unknown, "Unknown or expired UIA session"))?;
                let record = bind(stored.clone(), req)?;
                if record != stored {
                    self.sessions.insert(&id.to_owned(), &record)?;
                }
                (id.to_owned(), record)
            }
            // A first request may carry a stage without a session; start one for it.
            None => self.start(req, now)?,
        };
        let mut record = record;
        self.remember_password(&session_id, req.password, record.expires_ms);

        if let Some(stage) = auth.auth_type() {
            let allowed = req.flows.iter().any(|f| f.stages.contains(&stage));
            if !allowed {
                let error = StandardErrorBody::new(
                    ErrorKind::Unrecognized,
                    format!("Authentication stage {stage} is not offered here"),
                );
                return Err(self.challenge(req, &session_id, &record, Some(error)));
            }
            let outcome = match auth {
                // A token stage already passed in this session holds its use: it is not
                // counted again.
                AuthData::RegistrationToken(_) if record.completed.contains(&stage.to_string()) => Ok(()),
                // Single sign-on is done out of band, through the fallback page; naming it
                // afterwards (rather than sending the session alone) is fine.
                _ if stage == AuthType::Sso => match record.completed.contains(&stage.to_string()) {
                    true => Ok(()),
                    false => Err(StandardErrorBody::new(
                        ErrorKind::Forbidden,
                        "Sign in with single sign-on through the fallback page first".to_owned(),
                    )),
                },
                AuthData::RegistrationToken(t) => match self.registration_tokens.take_pending(&t.token)? {
                    Some(Accepted::Stored) => {
                        record.registration_token = Some(t.token.clone());
                        Ok(())
                    }
                    Some(Accepted::Configured) => Ok(()),
                    None => Err(StandardErrorBody::new(
                        ErrorKind::Forbidden,
                        "Invalid registration token".to_owned(),
                    )),
                },
                _ => self.check_stage(req, auth).await?,
            };
            if let Err(failure) = outcome {
                return Err(self.challenge(req, &session_id, &record, Some(failure)));
            }
            if !record.completed.contains(&stage.to_string()) {
                record.completed.push(stage.to_string());
                self.sessions.insert(&session_id, &record)?;
            }
        }

        let done = req
            .flows
            .iter()
            .any(|flow| flow.stages.iter().all(|s| record.completed.iter().any(|c| c == s.as_str())));
        if done {
            // The session is kept until it expires, so a client retrying after a lost
            // response gets the result again instead of an unknown-session error.
            let password =
                req.password.map(str::to_owned).or_else(|| self.remembered_password(&session_id, now));
            return Ok(Completed { session_id, params: record.params, password });
        }
        Err(self.challenge(req, &session_id, &record, None))
    }

    fn remember_password(&self, session_id: &str, password: Option<&str>, expires_ms: u64) {
        let Some(password) = password else { return };
        let mut passwords = self.passwords.lock().unwrap_or_else(|p| p.into_inner());
        if passwords.len() >= MAX_REMEMBERED_PASSWORDS && !passwords.contains_key(session_id) {
            let now = self.clock.now_ms();
            passwords.retain(|_, (_, expires)| *expires > now);
            if passwords.len() >= MAX_REMEMBERED_PASSWORDS {
                return;
            }
        }
        passwords.insert(session_id.to_owned(), (password.to_owned(), expires_ms));
    }

    fn remembered_password(&self, session_id: &str, now: u64) -> Option<String> {
        let passwords = self.passwords.lock().unwrap_or_else(|p| p.into_inner());
        passwords.get(session_id).filter(|(_, expires)| *expires > now).map(|(password, _)| password.clone())
    }

    /// The user and request (method, path) of a live session, for a page that asks the user
    /// to confirm it out of band.
    pub fn session_request(&self, session_id: &str) -> Result<Option<(Option<OwnedUserId>, String, String)>> {
        let now = self.clock.now_ms();
        Ok(self
            .sessions
            .get(&session_id.to_owned())?
            .filter(|r| r.expires_ms > now)
            .map(|r| (r.user_id, r.method, r.path)))
    }

    /// Mark a stage done outside the API (single sign-on through the fallback page) for a
    /// live session of `user_id`; the client then retries its request with the session.
    pub fn complete_out_of_band(&self, session_id: &str, user_id: &UserId, stage: AuthType) -> Result<()> {
        let now = self.clock.now_ms();
        let key = session_id.to_owned();
        let mut record = self
            .sessions
            .get(&key)?
            .filter(|r| r.expires_ms > now)
            .ok_or_else(|| Error::new(ErrorKind::Unknown, "Unknown or expired UIA session"))?;
        if record.user_id.as_deref() != Some(user_id) {
            return Err(Error::forbidden(
                "You signed in as another user than the one this confirmation is for",
            ));
        }
        if !record.completed.contains(&stage.to_string()) {
            record.completed.push(stage.to_string());
            self.sessions.insert(&key, &record)?;
        }
        Ok(())
    }

    /// Forget a session now, for operations whose authentication may serve once only
    /// (`login/get_token`).
    pub fn forget(&self, session_id: &str) -> Result<()> {
        self.passwords.lock().unwrap_or_else(|p| p.into_inner()).remove(session_id);
        Ok(self.sessions.remove(&session_id.to_owned())?)
    }

    /// The account a completed registration session created, if it created one.
    pub fn registered_user(&self, session_id: &str) -> Result<Option<OwnedUserId>> {
        Ok(self.sessions.get(&session_id.to_owned())?.and_then(|r| r.registered_user))
    }

    /// Queue the record that the session created `user_id`, in the batch that creates it, so
    /// a retry of the session answers that account instead of registering another.
    pub fn set_registered_user_in(
        &self,
        batch: &mut WriteBatch,
        session_id: &str,
        user_id: &UserId,
    ) -> Result<()> {
        let key = session_id.to_owned();
        let Some(mut record) = self.sessions.get(&key)? else { return Ok(()) };
        record.registered_user = Some(user_id.to_owned());
        Ok(self.sessions.put(batch, &key, &record)?)
    }

    /// Delete sessions past their expiry; run periodically. Returns how many went.
    pub fn remove_expired(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let expired: Vec<(String, UiaaSessionRecord)> = self
            .sessions
            .scan(crate::storage::kv::KeyRange::all(), crate::storage::Direction::Forward)?
            .filter_map(|row| match row {
                Ok((id, record)) if record.expires_ms <= now => Some(Ok((id, record))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        for (id, record) in &expired {
            self.sessions.remove(id)?;
            // A registration that never finished gives its token's pending use back.
            if let (Some(token), None) = (&record.registration_token, &record.registered_user) {
                self.registration_tokens.release(token)?;
            }
        }
        self.passwords.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, expires)| *expires > now);
        Ok(expired.len())
    }

    fn start(&self, req: &UiaaRequest<'_>, now: u64) -> Result<(String, UiaaSessionRecord)> {
        let id = random_string(32);
        let record = UiaaSessionRecord {
            user_id: req.user.map(ToOwned::to_owned),
            method: req.context.method.as_str().to_owned(),
            path: req.context.path.clone(),
            params: req.params.clone(),
            completed: Vec::new(),
            expires_ms: now + self.session_lifetime_ms,
            registered_user: None,
            registration_token: None,
        };
        self.sessions.insert(&id, &record)?;
        Ok((id, record))
    }

    /// The 401 body: flows, stages done, session, and the failure of the last stage if any.
    fn challenge(
        &self,
        req: &UiaaRequest<'_>,
        session_id: &str,
        record: &UiaaSessionRecord,
        failure: Option<StandardErrorBody>,
    ) -> Error {
        let mut info = UiaaInfo::new(req.flows.clone());
        info.completed = record.completed.iter().map(|s| AuthType::from(s.as_str())).collect();
        info.session = Some(session_id.to_owned());
        info.params = to_raw_value(&req.stage_params).ok();
        info.auth_error = failure.map(Box::new);
        Error::Uiaa(Box::new(info))
    }

    /// Check one stage. The outer `Result` is for internal failures; the inner one says
    /// whether the stage passed, and why not.
    async fn check_stage(
        &self,
        req: &UiaaRequest<'_>,
        auth: &AuthData,
    ) -> Result<Result<(), StandardErrorBody>> {
        let forbidden = |msg: &str| Ok(Err(StandardErrorBody::new(ErrorKind::Forbidden, msg.to_owned())));
        match auth {
            AuthData::Dummy(_) => Ok(Ok(())),
            AuthData::Password(p) => {
                let Some(user) = req.user else {
                    return forbidden("Password authentication needs an authenticated user");
                };
                let claimed: Option<OwnedUserId> = match &p.identifier {
                    UserIdentifier::Matrix(id) => resolve_login_user(&id.user, user.server_name()),
                    _ => None,
                };
                let Some(claimed) = claimed else { return forbidden("Invalid username or password") };
                if !self.password_matches(&claimed, &p.password).await? {
                    return forbidden("Invalid username or password");
                }
                // Proving to be someone else is no stage to retry: it is refused outright,
                // as Synapse does.
                if claimed != user {
                    return Err(Error::forbidden("Invalid auth"));
                }
                Ok(Ok(()))
            }
            _ => Ok(Err(StandardErrorBody::new(
                ErrorKind::Unrecognized,
                "Unsupported authentication stage".to_owned(),
            ))),
        }
    }
}

impl Uiaa {
    /// Whether `password` is the live account `user_id`'s: asked of the directory for a
    /// directory account (an error when it cannot be asked), checked here otherwise.
    async fn password_matches(&self, user_id: &UserId, password: &str) -> Result<bool> {
        if let Some(linked) = self.ldap.account(user_id)?
            && self.ldap.enabled()
        {
            let live = self.users.get(user_id)?.is_some_and(|u| !u.deactivated);
            return Ok(match self.ldap.authenticate(&linked.uid.to_lowercase(), password).await? {
                Check::Authenticated(entry) => live && entry.uid.eq_ignore_ascii_case(&linked.uid),
                Check::Refused(_) => false,
            });
        }
        Ok(self.users.check_password(user_id, password).await?.is_some())
    }
}

/// The session's record with this request bound in: refused (403) if the request has another
/// user, method or path than the one the session was started for, or changes a parameter an
/// earlier request gave; parameters given for the first time are added, and a new password
/// hash replaces the old one.
fn bind(mut record: UiaaSessionRecord, req: &UiaaRequest<'_>) -> Result<UiaaSessionRecord> {
    if record.user_id.as_deref() != req.user {
        return Err(Error::forbidden("UIA session was started by another user"));
    }
    let changed =
        || Error::forbidden("Requested operation has changed during the UI authentication session.");
    if record.method != req.context.method.as_str() || record.path != req.context.path {
        return Err(changed());
    }
    for (key, value) in &req.params {
        match record.params.get(key) {
            Some(earlier) if earlier != value => return Err(changed()),
            Some(_) => {}
            None => {
                record.params.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(record)
}
