//! `m.login.password` against the company directory: a name the directory knows and a
//! password it accepts log into the account of that name, made at the first login with the
//! directory's display name and email address (as Synapse's LDAP module, they are not
//! updated later) and linked to its entry; the admin flag follows `ldap.admin_filter` at
//! every login. An existing local account of that name is linked at its first directory
//! login and loses its local password: from then on the directory alone decides.

use ruma::{OwnedUserId, UserId};
use serde_json::json;

use super::{Accounts, SignIn, audit};
use crate::service::users::Users;
use crate::{
    Error, Result,
    matrix::user_id::registrable_user_id,
    service::{
        context::RequestContext,
        devices::IssuedTokens,
        ldap::{Check, DirectoryUser},
        rate_limits::Limiter,
    },
};

/// What asking the directory came to.
pub(super) enum Attempt {
    /// The directory accepted the password: the sign-in is done (with the device it made,
    /// for a device login).
    SignedIn(OwnedUserId, Option<IssuedTokens>),
    /// Not the directory's user, or a password it refused: the local password decides.
    NotHere,
    /// The directory could not be asked; the error to answer unless a local password fits.
    Unavailable(Error),
}

impl Accounts {
    /// Ask the directory about `user_id`'s localpart and `password`, and log in on yes.
    pub(super) async fn login_with_ldap(
        &self,
        user_id: &UserId,
        password: &str,
        target: &SignIn<'_>,
        context: &RequestContext,
        account_key: &str,
    ) -> Result<Attempt> {
        let ldap = &self.logins.ldap;
        // Only names that could be accounts here are sent: no filter syntax (`*`, `(`, `)`,
        // `\`, NUL) ever reaches the directory, escaping aside.
        if !ldap.enabled() || registrable_user_id(user_id.localpart(), &self.config.server_name).is_err() {
            return Ok(Attempt::NotHere);
        }
        let entry = match ldap.authenticate(user_id.localpart(), password).await {
            Ok(Check::Authenticated(entry)) => entry,
            Ok(Check::Refused(reason)) => {
                tracing::debug!(%user_id, reason, "LDAP refused the login");
                return Ok(Attempt::NotHere);
            }
            Err(error) => return Ok(Attempt::Unavailable(error)),
        };
        self.rate_limits.give_back(Limiter::LoginFailedAttempts, account_key);
        self.rate_limits.check(Limiter::LoginAccount, account_key, None)?;
        let (user_id, issued) = self.login_directory_user(&entry, target, context)?;
        Ok(Attempt::SignedIn(user_id, issued))
    }

    /// Sign the directory's user `entry` in, making or linking their account.
    fn login_directory_user(
        &self,
        entry: &DirectoryUser,
        target: &SignIn<'_>,
        context: &RequestContext,
    ) -> Result<(OwnedUserId, Option<IssuedTokens>)> {
        let localpart = entry.uid.to_lowercase();
        let user_id: OwnedUserId =
            registrable_user_id(&localpart, &self.config.server_name).map_err(|e| {
                Error::forbidden(format!(
                    "The directory's login name `{}` cannot be a Matrix user name here ({e})",
                    entry.uid
                ))
            })?;
        let (issued, created) = self.write_audited(
            context,
            |guard, batch| {
                let existing = self.users.get(&user_id)?;
                Users::ensure_may_log_in(existing.as_ref())?;
                let created = match existing {
                    None => {
                        self.appservices.ensure_user_not_exclusive(&user_id, None)?;
                        let displayname = entry.display_name.clone().or_else(|| Some(localpart.clone()));
                        let admin = entry.admin.unwrap_or(false);
                        self.users.create_in(batch, &user_id, None, admin, displayname)?;
                        if let Some(email) = &entry.email {
                            self.logins.threepids.add_verified_email_in(batch, &user_id, email)?;
                        }
                        self.logins.ldap.link_in(batch, &user_id, entry)?;
                        true
                    }
                    Some(record) => {
                        let linked = self.logins.ldap.account(&user_id)?;
                        let admin = entry.admin.unwrap_or(record.admin);
                        if linked.is_none() || record.password_hash.is_some() || admin != record.admin {
                            self.users.update_in(batch, &user_id, |r| {
                                r.password_hash = None;
                                r.admin = admin;
                            })?;
                        }
                        if linked.is_none_or(|l| l.dn != entry.dn || l.uid != entry.uid) {
                            self.logins.ldap.link_in(batch, &user_id, entry)?;
                        }
                        false
                    }
                };
                Ok((self.sign_in_session_in(guard, batch, &user_id, target, context)?, created))
            },
            |(issued, created)| {
                let mut params = json!({
                    "type": "m.login.password",
                    "auth_provider": "ldap",
                    "created": created,
                    "admin": entry.admin,
                });
                if let Some(issued) = issued {
                    params["device_id"] = json!(issued.device_id);
                }
                audit::Entry::success("login").target(&user_id).params(target.mark(params))
            },
        )?;
        if created {
            tracing::info!(%user_id, dn = %entry.dn, "account made from the LDAP directory");
        }
        tracing::info!(%user_id, "signed in through LDAP");
        Ok((user_id, issued))
    }

    /// Whether `user_id`'s password is kept by the company directory, so it cannot be
    /// changed here.
    pub fn password_managed_elsewhere(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.logins.ldap.account(user_id)?.is_some())
    }

    /// Refuse to set a password here for a directory account, with Synapse's answer when
    /// passwords cannot be changed (`403 M_FORBIDDEN` "Password change disabled") and why:
    /// for the user's own change, an admin's reset and the command line alike.
    pub(super) fn ensure_password_kept_here(&self, user_id: &UserId) -> Result<()> {
        if self.password_managed_elsewhere(user_id)? {
            return Err(Error::forbidden(
                "Password change disabled: this account's password is kept by the company directory \
                 (LDAP); change it there",
            ));
        }
        Ok(())
    }
}
