//! The account side of the OAuth 2.0 API: the device an authorization grant makes (one per
//! `urn:matrix:client:device:` scope, the client's session), its end by token revocation,
//! and the user's approval, given on the account page, that lets their cross-signing keys be
//! replaced for a few minutes without user-interactive auth (the `m.oauth` stage). Owns the
//! `cross_signing_resets` table.

use std::time::Duration;

use ruma::{OwnedDeviceId, UserId, api::client::uiaa::AuthFlow, api::client::uiaa::AuthType};
use serde_json::{Map, Value as JsonValue, json};

use super::Accounts;
use crate::{
    Result,
    service::{
        audit,
        context::RequestContext,
        devices::{DeviceIdentity, IssuedTokens},
        users::Users,
    },
    storage::tables::SsoSessionRecord,
};

/// How long an approved identity reset stays open (Synapse and MAS give ten minutes).
pub const CROSS_SIGNING_RESET_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The unstable name of the `m.oauth` stage (MSC4312) some clients still look for.
const UNSTABLE_OAUTH_STAGE: &str = "org.matrix.cross_signing_reset";

/// The flows of an identity reset by `m.oauth`, and the 401 answer's parameters.
pub(super) type OAuthStage = (Vec<AuthFlow>, Map<String, JsonValue>);

impl Accounts {
    /// The device of an OAuth 2.0 session: made (or, for a device ID the user already has,
    /// given new tokens) when the client exchanges its authorization code. `sso` is the
    /// provider session the user signed in with, which back-channel logout ends.
    #[allow(clippy::too_many_arguments)]
    pub fn oauth_session(
        &self,
        context: &RequestContext,
        user_id: &UserId,
        device_id: OwnedDeviceId,
        client_id: &str,
        client_name: &str,
        sso: Option<&SsoSessionRecord>,
    ) -> Result<IssuedTokens> {
        let now = self.login_tokens.now_ms();
        self.write_audited(
            context,
            |guard, batch| {
                Users::ensure_may_log_in(self.users.get(user_id)?.as_ref())?;
                self.sso_sessions.forget_device_in(batch, user_id, &device_id)?;
                let issued = self.devices.create_oauth_session_in(
                    guard,
                    batch,
                    user_id,
                    device_id.clone(),
                    Some(client_name.to_owned()),
                    client_id,
                    context.client_ip.clone(),
                )?;
                if let Some(session) = sso {
                    self.sso_sessions.record_in(batch, session, user_id, &issued.device_id, now)?;
                }
                Ok(issued)
            },
            |issued| {
                audit::Entry::success("login").target(user_id).params(json!({
                    "type": "oauth2",
                    "client_id": client_id,
                    "device_id": issued.device_id,
                }))
            },
        )
    }

    /// Token revocation (RFC 7009): the session a token of an OAuth 2.0 client belongs to
    /// ends, device and all. Whether the token was known is not told (an unknown or spent
    /// token is no error), so the answer is whether a session ended.
    pub fn revoke_oauth_token(
        &self,
        context: &RequestContext,
        token: &str,
        client_id: Option<&str>,
    ) -> Result<bool> {
        let Some((DeviceIdentity { user_id, device_id }, owner)) = self.devices.oauth_token_owner(token)?
        else {
            return Ok(false);
        };
        // The spec: revoke even when another client (a secret scanner) presents the token.
        if client_id.is_some_and(|c| c != owner) {
            tracing::warn!(%user_id, %device_id, "an OAuth token was revoked by a client other than its own");
        }
        let devices = [device_id.clone()];
        let removed = self.write_audited(
            context,
            |guard, batch| self.remove_devices_in(guard, batch, &user_id, Some(&devices), None),
            |_| {
                audit::Entry::success("logout")
                    .target(&user_id)
                    .params(json!({ "device_id": device_id, "type": "oauth2.revoke", "client_id": owner }))
            },
        )?;
        self.devices_removed(&user_id, removed)?;
        Ok(true)
    }

    /// The user approved, in their browser, replacing their cross-signing keys: for the next
    /// ten minutes an upload needs no user-interactive auth.
    pub fn allow_cross_signing_reset(&self, context: &RequestContext, user_id: &UserId) -> Result<u64> {
        let until = self.login_tokens.now_ms().saturating_add(CROSS_SIGNING_RESET_WINDOW.as_millis() as u64);
        self.write_audited(
            context,
            |_, batch| {
                self.cross_signing_resets.put(batch, &user_id.to_owned(), &until)?;
                Ok(until)
            },
            |until| {
                audit::Entry::success("cross_signing.reset_allowed")
                    .target(user_id)
                    .params(json!({ "until_ms": until }))
            },
        )
    }

    /// Whether an approved identity reset is open for the user.
    pub(super) fn cross_signing_reset_allowed(&self, user_id: &UserId) -> Result<bool> {
        let now = self.login_tokens.now_ms();
        Ok(self.cross_signing_resets.get(&user_id.to_owned())?.is_some_and(|until| now < until))
    }

    /// For a device of an OAuth 2.0 session, the stage its identity reset offers: `m.oauth`,
    /// whose URL opens the account page to approve it. `None` for
    /// other devices, which re-authenticate as usual.
    pub(super) fn oauth_reset_stages(&self, who: &DeviceIdentity) -> Result<Option<OAuthStage>> {
        if self.devices.oauth_client_of(&who.user_id, &who.device_id)?.is_none() {
            return Ok(None);
        }
        let url = format!(
            "{}{}?action=org.matrix.cross_signing_reset",
            self.config.public_base_url(),
            crate::service::oauth::ACCOUNT_PATH
        );
        // One flow: ruma reads the unstable stage name as `m.oauth`, so naming both would be
        // one flow twice; the parameters carry both names.
        let flows = vec![AuthFlow::new(vec![AuthType::OAuth])];
        let mut params = Map::new();
        params.insert(AuthType::OAuth.to_string(), json!({ "url": url }));
        params.insert(UNSTABLE_OAUTH_STAGE.to_owned(), json!({ "url": url }));
        Ok(Some((flows, params)))
    }
}
