//! `org.matrix.login.jwt`: a JSON Web Token signed by the company's portal logs into the
//! account its subject claim names, made at the first login (with the display name claim),
//! as Synapse does. Refusals are `403 M_FORBIDDEN` with Synapse's reasons, and audited.

use ruma::api::client::session::login;
use serde_json::{Value as JsonValue, json};

use super::{Accounts, audit, login_response};
use crate::service::users::Users;
use crate::{
    Error, Result,
    matrix::user_id::{registrable_user_id, resolve_login_user},
    service::{context::RequestContext, rate_limits::Limiter},
};

/// The login type, as Synapse names it.
pub(super) const LOGIN_TYPE: &str = "org.matrix.login.jwt";

impl Accounts {
    /// `POST /login` with `{"type": "org.matrix.login.jwt", "token": ...}`.
    pub(super) fn login_with_jwt(
        &self,
        req: &login::v3::Request,
        context: &RequestContext,
    ) -> Result<login::v3::Response> {
        let refused = |reason: String, error: Error| {
            let entry =
                audit::Entry::failure("login").params(json!({ "type": LOGIN_TYPE, "reason": reason }));
            self.audit.record_or_log(context, entry);
            error
        };
        let data = req.login_info.data();
        let Some(token) = data.get("token").and_then(JsonValue::as_str) else {
            let error = Error::forbidden("Token field for JWT is missing");
            return Err(refused("token missing".to_owned(), error));
        };
        let claims = match self.logins.jwt.validate(token) {
            Ok(claims) => claims,
            Err(error) => return Err(refused(error.to_string(), error)),
        };
        let user_id = resolve_login_user(&claims.subject, &self.config.server_name)
            .filter(|id| registrable_user_id(id.localpart(), &self.config.server_name).is_ok())
            .ok_or_else(|| {
                let error = Error::forbidden(format!(
                    "The token's subject `{}` cannot be a user name on this server",
                    claims.subject
                ));
                refused("invalid subject".to_owned(), error)
            })?;
        super::devices::check_new_device(
            req.device_id.as_deref(),
            req.initial_device_display_name.as_deref(),
        )?;
        self.rate_limits.check(Limiter::LoginAccount, user_id.as_str(), None)?;
        let (issued, created) = self.write_audited(
            context,
            |guard, batch| {
                let existing = self.users.get(&user_id)?;
                Users::ensure_may_log_in(existing.as_ref())?;
                let created = match existing {
                    None => {
                        self.appservices.ensure_user_not_exclusive(&user_id, None)?;
                        let displayname =
                            claims.display_name.clone().or_else(|| Some(user_id.localpart().to_owned()));
                        self.users.create_in(batch, &user_id, None, false, displayname)?;
                        true
                    }
                    Some(_) => false,
                };
                Ok((self.login_session_in(guard, batch, &user_id, req, context)?, created))
            },
            |(issued, created)| {
                audit::Entry::success("login").target(&user_id).params(json!({
                    "type": LOGIN_TYPE,
                    "device_id": issued.device_id,
                    "created": created,
                }))
            },
        )?;
        if created {
            tracing::info!(%user_id, "account made at its first JWT login");
        }
        tracing::info!(%user_id, device_id = %issued.device_id, "logged in with a JWT");
        Ok(login_response(user_id, issued))
    }
}
