//! User-interactive authentication, done once for every endpoint that needs it: sessions,
//! completed stages, the 401 body with `flows`/`params`/`session`, and stage checks.
//! Owns the `uiaa_sessions` table.

use std::sync::Arc;

use ruma::{
    OwnedUserId, UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
};
use serde_json::value::to_raw_value;

use super::{clock::Clock, passwords::random_string, users::Users};
use crate::{
    Error, Result,
    matrix::user_id::resolve_login_user,
    storage::{
        KvStore, Table,
        tables::{UIAA_SESSIONS, UiaaSessionRecord},
    },
};

/// What an endpoint demands: the flows it accepts, and who is asking (for password stages).
pub struct UiaaRequirement<'a> {
    /// A stable name of the endpoint; a session started for one endpoint cannot serve another.
    pub endpoint: &'static str,
    pub flows: Vec<AuthFlow>,
    /// The authenticated user, for endpoints called with an access token.
    pub user: Option<&'a UserId>,
}

pub struct Uiaa {
    sessions: Table<String, UiaaSessionRecord>,
    users: Arc<Users>,
    clock: Arc<dyn Clock>,
    registration_token: Option<String>,
    session_lifetime_ms: u64,
}

/// Compare secrets in time independent of where, and whether in length, they differ: the
/// digests compared are always 32 bytes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Uiaa {
    pub fn new(
        store: &Arc<dyn KvStore>,
        users: Arc<Users>,
        clock: Arc<dyn Clock>,
        registration_token: Option<String>,
        session_lifetime_secs: u64,
    ) -> Self {
        Self {
            sessions: UIAA_SESSIONS.open(store),
            users,
            clock,
            registration_token,
            session_lifetime_ms: session_lifetime_secs.saturating_mul(1000),
        }
    }

    /// Whether `token` is the configured registration token.
    pub fn registration_token_valid(&self, token: &str) -> bool {
        self.registration_token
            .as_deref()
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), token.as_bytes()))
    }

    /// Advance authentication with the request's `auth`. `Ok(())` once a flow is complete;
    /// otherwise `Error::Uiaa` with what the client must do next.
    pub async fn authenticate(&self, req: &UiaaRequirement<'_>, auth: Option<&AuthData>) -> Result<()> {
        let now = self.clock.now_ms();
        let Some(auth) = auth else {
            let session = self.start(req, now)?;
            return Err(self.challenge(req, &session.0, &session.1, None));
        };

        let (session_id, mut record) = match auth.session() {
            Some(id) => {
                let record = self
                    .sessions
                    .get(&id.to_owned())?
                    .filter(|r| r.expires_ms > now)
                    .ok_or_else(|| Error::new(ErrorKind::Unknown, "Unknown or expired UIA session"))?;
                if record.endpoint != req.endpoint || record.user_id.as_deref() != req.user {
                    return Err(Error::forbidden("UIA session was started for another request"));
                }
                (id.to_owned(), record)
            }
            // A first request may carry a stage without a session; start one for it.
            None => self.start(req, now)?,
        };

        if let Some(stage) = auth.auth_type() {
            let allowed = req.flows.iter().any(|f| f.stages.contains(&stage));
            if !allowed {
                let error = StandardErrorBody::new(
                    ErrorKind::Unrecognized,
                    format!("Authentication stage {stage} is not offered here"),
                );
                return Err(self.challenge(req, &session_id, &record, Some(error)));
            }
            if let Err(failure) = self.check_stage(req, auth).await? {
                return Err(self.challenge(req, &session_id, &record, Some(failure)));
            }
            if !record.completed.contains(&stage.to_string()) {
                record.completed.push(stage.to_string());
            }
        }

        let done = req
            .flows
            .iter()
            .any(|flow| flow.stages.iter().all(|s| record.completed.iter().any(|c| c == s.as_str())));
        self.sessions.insert(&session_id, &record)?;
        if done {
            // The session is kept until it expires, so a client retrying after a lost
            // response gets the result again instead of an unknown-session error.
            return Ok(());
        }
        Err(self.challenge(req, &session_id, &record, None))
    }

    /// Delete sessions past their expiry; run periodically. Returns how many went.
    pub fn remove_expired(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let expired: Vec<String> = self
            .sessions
            .scan(crate::storage::kv::KeyRange::all(), crate::storage::Direction::Forward)?
            .filter_map(|row| match row {
                Ok((id, record)) if record.expires_ms <= now => Some(Ok(id)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        for id in &expired {
            self.sessions.remove(id)?;
        }
        Ok(expired.len())
    }

    fn start(&self, req: &UiaaRequirement<'_>, now: u64) -> Result<(String, UiaaSessionRecord)> {
        let id = random_string(32);
        let record = UiaaSessionRecord {
            user_id: req.user.map(ToOwned::to_owned),
            endpoint: req.endpoint.to_owned(),
            completed: Vec::new(),
            expires_ms: now + self.session_lifetime_ms,
        };
        self.sessions.insert(&id, &record)?;
        Ok((id, record))
    }

    /// The 401 body: flows, stages done, session, and the failure of the last stage if any.
    fn challenge(
        &self,
        req: &UiaaRequirement<'_>,
        session_id: &str,
        record: &UiaaSessionRecord,
        failure: Option<StandardErrorBody>,
    ) -> Error {
        let mut info = UiaaInfo::new(req.flows.clone());
        info.completed = record.completed.iter().map(|s| AuthType::from(s.as_str())).collect();
        info.session = Some(session_id.to_owned());
        info.params = to_raw_value(&serde_json::json!({})).ok();
        info.auth_error = failure.map(Box::new);
        Error::Uiaa(Box::new(info))
    }

    /// Check one stage. The outer `Result` is for internal failures; the inner one says
    /// whether the stage passed, and why not.
    async fn check_stage(
        &self,
        req: &UiaaRequirement<'_>,
        auth: &AuthData,
    ) -> Result<Result<(), StandardErrorBody>> {
        let forbidden = |msg: &str| Ok(Err(StandardErrorBody::new(ErrorKind::Forbidden, msg.to_owned())));
        match auth {
            AuthData::Dummy(_) => Ok(Ok(())),
            AuthData::RegistrationToken(t) => {
                if self.registration_token_valid(&t.token) {
                    Ok(Ok(()))
                } else {
                    forbidden("Invalid registration token")
                }
            }
            AuthData::Password(p) => {
                let Some(user) = req.user else {
                    return forbidden("Password authentication needs an authenticated user");
                };
                let claimed: Option<OwnedUserId> = match &p.identifier {
                    UserIdentifier::Matrix(id) => resolve_login_user(&id.user, user.server_name()),
                    _ => None,
                };
                if claimed.as_deref() != Some(user) {
                    return forbidden("Invalid username or password");
                }
                if self.users.check_password(user, &p.password).await?.is_some() {
                    Ok(Ok(()))
                } else {
                    forbidden("Invalid password")
                }
            }
            _ => Ok(Err(StandardErrorBody::new(
                ErrorKind::Unrecognized,
                "Unsupported authentication stage".to_owned(),
            ))),
        }
    }
}
