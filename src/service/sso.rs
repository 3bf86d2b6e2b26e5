//! `Sso`: legacy single sign-on (`m.login.sso`) over the OpenID providers of [`Oidc`] — the
//! redirect to a provider with the client's `redirectUrl` checked, the callback that turns
//! the provider's identity into an account (through `Accounts`) and a one-time login token
//! for the client (sent at once to clients in `sso.client_whitelist`, after a confirmation
//! page to any other), re-authentication by single sign-on for user-interactive auth (the
//! `m.login.sso` fallback page), and back-channel logout. Failed sign-ins go to the audit
//! log as failed logins. Owns no table.

use std::sync::Arc;

use ruma::{OwnedUserId, api::client::uiaa::AuthType};
use serde_json::json;

use super::{
    accounts::{Accounts, SsoPolicy},
    audit::{self, Audit},
    context::RequestContext,
    login_tokens::{LoginTokens, SSO_LOGIN_TOKEN_LIFETIME},
    oidc::{CallbackParams, Finished, Identity, LogoutRequest, Oidc, Purpose, Refused, Started},
    uiaa::Uiaa,
    users::Users,
};
use crate::{Error, Result, config::Config, storage::tables::SsoSessionRecord};

/// The longest `redirectUrl` accepted.
const MAX_REDIRECT_URL_LEN: usize = 2048;
/// Schemes a login token is never sent to: they run code or read local files rather than
/// open a client.
const REFUSED_SCHEMES: &[&str] = &["javascript", "data", "vbscript", "file", "blob", "about", "filesystem"];

/// How a login starts.
#[derive(Debug)]
pub enum LoginStart {
    /// Off to the provider.
    Redirect(Started),
    /// Several providers and none named: the user picks one (ID and name of each).
    Choose(Vec<(String, String)>),
}

/// How a callback ends.
#[derive(Debug)]
pub enum CallbackOutcome {
    /// Straight back to a trusted client, login token attached.
    Redirect { url: String },
    /// A page naming the client and the account, with a link to continue (the login token
    /// attached to it), for a client not in `sso.client_whitelist`.
    Confirm { url: String, client: String, user_id: OwnedUserId },
    /// The user-interactive auth stage is done; the page tells the client.
    UiAuthDone,
    /// A browser signed in to this server's own pages as `user_id`; on to `then`.
    SignedIn { user_id: OwnedUserId, session: SsoSessionRecord, then: String },
}

/// The `m.login.sso` fallback page's content.
#[derive(Debug)]
pub struct UiAuthStart {
    /// What the client is trying to do, for the user to confirm.
    pub action: String,
    pub idp_name: String,
    pub started: Started,
}

pub struct Sso {
    config: Arc<Config>,
    oidc: Arc<Oidc>,
    accounts: Arc<Accounts>,
    users: Arc<Users>,
    uiaa: Arc<Uiaa>,
    login_tokens: Arc<LoginTokens>,
    audit: Arc<Audit>,
}

/// The provider session a sign-in came from, which back-channel logout ends.
fn session_of(identity: &Identity) -> SsoSessionRecord {
    SsoSessionRecord {
        idp_id: identity.idp_id.clone(),
        subject: identity.subject.clone(),
        sid: identity.sid.clone().unwrap_or_default(),
    }
}

/// `redirectUrl` with `loginToken` set (replacing any the URL had, as the spec says).
fn with_login_token(redirect_url: &str, token: &str) -> Result<String> {
    let mut url =
        url::Url::parse(redirect_url).map_err(|_| Error::invalid_param("redirectUrl is not a URL"))?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "loginToken")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.set_query(None);
    {
        let mut query = url.query_pairs_mut();
        query.extend_pairs(kept);
        query.append_pair("loginToken", token);
    }
    Ok(url.into())
}

/// A `redirectUrl` a login token may be sent to: an absolute URL of a scheme that opens a
/// client (web or app), without credentials in it.
fn check_redirect_url(redirect_url: &str) -> Result<()> {
    if redirect_url.len() > MAX_REDIRECT_URL_LEN {
        return Err(Error::invalid_param("redirectUrl is too long"));
    }
    let url = url::Url::parse(redirect_url)
        .map_err(|_| Error::invalid_param("redirectUrl is not an absolute URL"))?;
    if REFUSED_SCHEMES.contains(&url.scheme()) {
        return Err(Error::invalid_param(format!("redirectUrl may not be a {}: URL", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_param("redirectUrl may not carry credentials"));
    }
    Ok(())
}

/// How the confirmation page names a client: its origin (or scheme and host for an app).
fn client_name(redirect_url: &str) -> String {
    match url::Url::parse(redirect_url) {
        Ok(url) => match url.host_str() {
            Some(host) => match url.port() {
                Some(port) => format!("{}://{host}:{port}", url.scheme()),
                None => format!("{}://{host}", url.scheme()),
            },
            None => format!("{}:", url.scheme()),
        },
        Err(_) => redirect_url.to_owned(),
    }
}

/// What a user-interactive auth session is for, in words.
fn describe(method: &str, path: &str) -> String {
    let path = path.trim_end_matches('/');
    let what = if path.ends_with("/delete_devices") || (method == "DELETE" && path.contains("/devices/")) {
        "remove a device from your account"
    } else if path.ends_with("/keys/device_signing/upload") {
        "reset your encryption identity (cross-signing keys)"
    } else if path.ends_with("/account/password") {
        "change your password"
    } else if path.ends_with("/account/deactivate") {
        "deactivate your account"
    } else if path.ends_with("/login/get_token") {
        "sign in a new device to your account"
    } else {
        "perform a sensitive action on your account"
    };
    format!("A client is trying to {what}.")
}

impl Sso {
    pub fn new(
        config: Arc<Config>,
        oidc: Arc<Oidc>,
        accounts: Arc<Accounts>,
        users: Arc<Users>,
        uiaa: Arc<Uiaa>,
        login_tokens: Arc<LoginTokens>,
        audit: Arc<Audit>,
    ) -> Self {
        Self { config, oidc, accounts, users, uiaa, login_tokens, audit }
    }

    /// `GET /login/sso/redirect[/{idpId}]`.
    pub async fn start_login(
        &self,
        idp_id: Option<&str>,
        redirect_url: &str,
        browser: Option<&str>,
    ) -> Result<LoginStart> {
        if !self.config.sso_enabled() {
            return Err(Error::unrecognized("Single sign-on is not configured on this server"));
        }
        check_redirect_url(redirect_url)?;
        let idp_id = match idp_id {
            Some(id) => id.to_owned(),
            None => {
                let mut providers = self.oidc.providers();
                match (providers.next(), providers.next()) {
                    (Some(only), None) => only.id.clone(),
                    _ => {
                        let choices = self
                            .oidc
                            .providers()
                            .map(|p| (p.id.clone(), p.display_name().to_owned()))
                            .collect();
                        return Ok(LoginStart::Choose(choices));
                    }
                }
            }
        };
        let purpose = Purpose::Login { redirect_url: redirect_url.to_owned() };
        Ok(LoginStart::Redirect(self.oidc.start(&idp_id, purpose, browser).await?))
    }

    /// The provider's callback. Failures are recorded as failed logins.
    pub async fn callback(
        &self,
        params: CallbackParams,
        browser: Option<&str>,
        context: &RequestContext,
    ) -> Result<CallbackOutcome> {
        let finished = match self.oidc.finish(params, browser).await {
            Ok(finished) => finished,
            Err(Refused { idp_id, purpose, subject, error }) => {
                self.record_failure(context, idp_id.as_deref(), purpose.as_ref(), subject.as_deref(), &error);
                return Err(error);
            }
        };
        let Finished { purpose, identity } = finished;
        match purpose {
            Purpose::Login { redirect_url } => {
                let purpose = Purpose::Login { redirect_url: redirect_url.clone() };
                let user_id = self.account_of(context, &identity, &purpose)?;
                let session = session_of(&identity);
                let token = self.login_tokens.issue(&user_id, SSO_LOGIN_TOKEN_LIFETIME, Some(session))?;
                let url = with_login_token(&redirect_url, &token)?;
                tracing::info!(%user_id, idp = %identity.idp_id, "single sign-on succeeded; login token sent to the client");
                if self
                    .config
                    .sso
                    .client_whitelist
                    .iter()
                    .any(|prefix| redirect_url.starts_with(prefix.as_str()))
                {
                    Ok(CallbackOutcome::Redirect { url })
                } else {
                    Ok(CallbackOutcome::Confirm { url, client: client_name(&redirect_url), user_id })
                }
            }
            Purpose::SignIn { then } => {
                let purpose = Purpose::SignIn { then: then.clone() };
                let user_id = self.account_of(context, &identity, &purpose)?;
                tracing::info!(%user_id, idp = %identity.idp_id, "signed in to this server's pages through single sign-on");
                Ok(CallbackOutcome::SignedIn { user_id, session: session_of(&identity), then })
            }
            Purpose::UiAuth { session_id } => {
                let purpose = Purpose::UiAuth { session_id: session_id.clone() };
                let outcome = self.finish_ui_auth(&session_id, &identity);
                if let Err(error) = &outcome {
                    self.record_failure(
                        context,
                        Some(&identity.idp_id),
                        Some(&purpose),
                        Some(&identity.subject),
                        error,
                    );
                }
                outcome
            }
        }
    }

    /// The account the provider's user signs in to (linked, existing or made, as the
    /// provider's policy allows); a refusal is recorded.
    fn account_of(
        &self,
        context: &RequestContext,
        identity: &Identity,
        purpose: &Purpose,
    ) -> Result<OwnedUserId> {
        let policy = self
            .oidc
            .providers()
            .find(|p| p.id == identity.idp_id)
            .map(|p| SsoPolicy {
                allow_existing_users: p.allow_existing_users,
                enable_registration: p.enable_registration,
            })
            .ok_or_else(|| Error::internal("the provider of a finished sign-in is gone"))?;
        self.accounts.sso_account(context, identity, policy).inspect_err(|error| {
            self.record_failure(
                context,
                Some(&identity.idp_id),
                Some(purpose),
                Some(&identity.subject),
                error,
            );
        })
    }

    /// `/_conduit/sign-in/idp/{idpId}`: sign in to this server's pages through a provider,
    /// then go on to `then`.
    pub async fn start_sign_in(&self, idp_id: &str, then: &str, browser: Option<&str>) -> Result<Started> {
        self.oidc.start(idp_id, Purpose::SignIn { then: then.to_owned() }, browser).await
    }

    /// The `m.login.sso` stage of a user-interactive auth session, done if the provider's
    /// user is the one linked to the session's account.
    fn finish_ui_auth(&self, session_id: &str, identity: &Identity) -> Result<CallbackOutcome> {
        let linked = self.users.by_external_id(&identity.idp_id, &identity.subject)?.map(|l| l.user_id);
        let Some((user_id, _, _)) = self.uiaa.session_request(session_id)? else {
            return Err(Error::forbidden("This confirmation has expired. Start again from your app."));
        };
        match (linked, user_id) {
            (Some(linked), Some(user_id)) if linked == user_id => {
                self.uiaa.complete_out_of_band(session_id, &user_id, AuthType::Sso)?;
                Ok(CallbackOutcome::UiAuthDone)
            }
            _ => Err(Error::forbidden(
                "You signed in at the identity provider as another user than the one this confirmation is for.",
            )),
        }
    }

    fn record_failure(
        &self,
        context: &RequestContext,
        idp_id: Option<&str>,
        purpose: Option<&Purpose>,
        subject: Option<&str>,
        error: &Error,
    ) {
        let reason = match error {
            Error::Matrix { message, .. } | Error::Upstream(message) => message.clone(),
            other => other.to_string(),
        };
        let action = match purpose {
            Some(Purpose::UiAuth { .. }) => "uia.sso",
            _ => "login",
        };
        let entry = audit::Entry::failure(action)
            .params(json!({ "type": "m.login.sso", "idp_id": idp_id, "subject": subject, "reason": reason }));
        self.audit.record_or_log(context, entry);
    }

    /// `GET /_matrix/client/v3/auth/m.login.sso/fallback/web?session=`: what the session is
    /// for, and an authorization at a provider the session's user is linked to.
    pub async fn start_ui_auth(&self, session_id: &str, browser: Option<&str>) -> Result<UiAuthStart> {
        let (user_id, method, path) = self
            .uiaa
            .session_request(session_id)?
            .ok_or_else(|| Error::not_found("Unknown or expired user-interactive auth session"))?;
        let user_id = user_id.ok_or_else(|| Error::forbidden("This session is not for a signed-in user"))?;
        let idp_id = self
            .accounts
            .sso_providers_of(&user_id)?
            .next()
            .ok_or_else(|| Error::forbidden("Your account is not linked to an identity provider"))?;
        let idp_name = self
            .oidc
            .providers()
            .find(|p| p.id == idp_id)
            .map(|p| p.display_name().to_owned())
            .unwrap_or_default();
        let purpose = Purpose::UiAuth { session_id: session_id.to_owned() };
        let started = self.oidc.start(&idp_id, purpose, browser).await?;
        Ok(UiAuthStart { action: describe(&method, &path), idp_name, started })
    }

    /// A back-channel logout token from a provider: end the sessions it names. Returns how
    /// many devices went, and what the token asked to end (whose browser sessions of this
    /// server's own pages go too).
    pub async fn backchannel_logout(
        &self,
        logout_token: &str,
        context: &RequestContext,
    ) -> Result<(usize, LogoutRequest)> {
        let request = self.oidc.logout_request(logout_token).await.inspect_err(|error| {
            let entry = audit::Entry::failure("logout").params(json!({
                "type": "backchannel_logout",
                "reason": error.to_string(),
            }));
            self.audit.record_or_log(context, entry);
        })?;
        let removed = self.accounts.end_sso_sessions(
            context,
            &request.idp_id,
            request.subject.as_deref(),
            request.sid.as_deref(),
        )?;
        Ok((removed, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_tokens_replace_earlier_ones_in_redirect_urls() {
        let url = with_login_token("https://app.example/?a=1&loginToken=old#/login", "new").unwrap();
        assert_eq!(url, "https://app.example/?a=1&loginToken=new#/login");
        let app = with_login_token("element://vector/webapp/", "t").unwrap();
        assert_eq!(app, "element://vector/webapp/?loginToken=t");
    }

    #[test]
    fn redirect_urls_that_would_run_code_or_leak_are_refused() {
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "/relative",
            "https://user:pw@app.example/",
            &format!("https://app.example/{}", "a".repeat(MAX_REDIRECT_URL_LEN)),
        ] {
            assert!(check_redirect_url(bad).is_err(), "{bad}");
        }
        for good in ["https://app.example/#/login", "http://127.0.0.1:8080/", "element://vector/webapp/"] {
            check_redirect_url(good).unwrap();
        }
        assert_eq!(client_name("https://app.example:8443/x?y"), "https://app.example:8443");
    }
}
