//! Accounts and their profiles: existence, password hashes, deactivation, admin flag,
//! display name and avatar, and the identity-provider accounts linked to them. Owns the
//! `users`, `profiles`, `user_external_ids` and `external_ids_by_user` tables.

use std::sync::Arc;

use ruma::{OwnedMxcUri, OwnedUserId, UserId, api::error::ErrorKind};

use super::{clock::Clock, passwords::Passwords};
use crate::{
    Error, Result,
    storage::{
        Direction, Durability, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{
            EXTERNAL_IDS_BY_USER, ExternalIdRecord, PROFILES, ProfileRecord, USER_EXTERNAL_IDS, USERS,
            UserRecord,
        },
    },
};

/// Longest display name accepted, in bytes (as Synapse).
const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest avatar URL accepted, in bytes (as Synapse).
const MAX_AVATAR_URL_LEN: usize = 1000;

/// An account's standing, read once: see [`Users::standing`].
#[derive(Clone, Copy, Debug)]
pub struct Standing {
    pub suspended: bool,
    pub shadow_banned: bool,
}

impl Standing {
    /// Refuse an action a suspended account may not take (MSC3823: `M_USER_SUSPENDED`).
    pub fn ensure_not_suspended(&self, action: &str) -> Result<()> {
        if self.suspended {
            return Err(Error::new(
                ErrorKind::UserSuspended,
                format!("{action} while account is suspended is not allowed."),
            ));
        }
        Ok(())
    }
}

pub struct Users {
    users: Table<OwnedUserId, UserRecord>,
    profiles: Table<OwnedUserId, ProfileRecord>,
    passwords: Arc<Passwords>,
    clock: Arc<dyn Clock>,
    /// Provider accounts (identity provider ID, subject) linked to local accounts.
    external_ids: Table<(String, String), ExternalIdRecord>,
    external_ids_by_user: Table<(OwnedUserId, String, String), ()>,
}

impl Users {
    pub fn new(store: &Arc<dyn KvStore>, passwords: Arc<Passwords>, clock: Arc<dyn Clock>) -> Self {
        Self {
            users: USERS.open(store),
            profiles: PROFILES.open(store),
            passwords,
            clock,
            external_ids: USER_EXTERNAL_IDS.open(store),
            external_ids_by_user: EXTERNAL_IDS_BY_USER.open(store),
        }
    }

    /// The local account a provider account is linked to, if any.
    pub fn by_external_id(&self, idp_id: &str, subject: &str) -> Result<Option<ExternalIdRecord>> {
        Ok(self.external_ids.get(&(idp_id.to_owned(), subject.to_owned()))?)
    }

    /// The providers (ID, subject) linked to a local account.
    pub fn external_ids(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        self.external_ids_by_user
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| row.map(|((_, idp, subject), ())| (idp, subject)).map_err(Error::from))
            .collect()
    }

    /// Queue a link from a provider account to a local account.
    pub fn link_external_id_in(
        &self,
        batch: &mut WriteBatch,
        idp_id: &str,
        subject: &str,
        user_id: &UserId,
        email: Option<String>,
    ) -> Result<()> {
        let record = ExternalIdRecord { user_id: user_id.to_owned(), linked_ms: self.clock.now_ms(), email };
        self.external_ids.put(batch, &(idp_id.to_owned(), subject.to_owned()), &record)?;
        self.external_ids_by_user.put(
            batch,
            &(user_id.to_owned(), idp_id.to_owned(), subject.to_owned()),
            &(),
        )?;
        Ok(())
    }

    /// The account record, if the user ID was ever registered here.
    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.users.get(&user_id.to_owned())?)
    }

    /// Whether the name is taken, by a live or a deactivated account.
    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.users.contains(&user_id.to_owned())?)
    }

    /// Queue the creation of an account with an already-hashed password and its initial
    /// profile. The caller checks availability and commits the batch.
    pub fn create_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        password_hash: Option<String>,
        admin: bool,
        displayname: Option<String>,
    ) -> Result<()> {
        let record = UserRecord {
            password_hash,
            created_ms: self.clock.now_ms(),
            deactivated: false,
            admin,
            locked: false,
            suspended: false,
            shadow_banned: false,
            erased: false,
            user_type: None,
        };
        self.users.put(batch, &user_id.to_owned(), &record)?;
        let profile = ProfileRecord { displayname, avatar_url: None };
        self.profiles.put(batch, &user_id.to_owned(), &profile)?;
        Ok(())
    }

    /// Hash a password with the configured parameters.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        self.passwords.hash(password.to_owned()).await
    }

    /// If `password` is the password of the live account `user_id`, the stored hash it
    /// matched (so a caller can re-check, under a lock, that it is still current). Missing and
    /// deactivated accounts cost the same effort and answer `None`.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<Option<String>> {
        let hash = self.get(user_id)?.filter(|u| !u.deactivated).and_then(|u| u.password_hash);
        let matched = self.passwords.verify(hash.clone(), password.to_owned()).await?;
        Ok(hash.filter(|_| matched))
    }

    /// Queue a password change. Fails if the account does not exist.
    pub fn set_password_hash_in(&self, batch: &mut WriteBatch, user_id: &UserId, hash: String) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        record.password_hash = Some(hash);
        self.users.put(batch, &user_id.to_owned(), &record).map_err(Error::from)
    }

    /// Queue a change of the admin flag. Fails if the account does not exist.
    pub fn set_admin_in(&self, batch: &mut WriteBatch, user_id: &UserId, admin: bool) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        record.admin = admin;
        self.users.put(batch, &user_id.to_owned(), &record).map_err(Error::from)
    }

    /// Queue deactivation: the password is dropped and the record kept so the name stays taken.
    /// With `erase`, the profile is cleared too and the account marked erased.
    pub fn deactivate_in(&self, batch: &mut WriteBatch, user_id: &UserId, erase: bool) -> Result<()> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        record.deactivated = true;
        record.password_hash = None;
        // A deactivated account is neither locked nor suspended: it is gone (Synapse refuses
        // both at once).
        record.locked = false;
        record.erased |= erase;
        self.users.put(batch, &user_id.to_owned(), &record)?;
        if erase {
            self.profiles.put(batch, &user_id.to_owned(), &ProfileRecord::default())?;
        }
        Ok(())
    }

    /// Queue a change to an account's record (the admin API's flags). Fails if the account
    /// does not exist.
    pub fn update_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<UserRecord> {
        let mut record = self.get(user_id)?.ok_or_else(|| Error::not_found("User not found"))?;
        change(&mut record);
        self.users.put(batch, &user_id.to_owned(), &record)?;
        Ok(record)
    }

    /// Every account ever created, in user ID order.
    pub fn all(&self) -> Result<Vec<(OwnedUserId, UserRecord)>> {
        Ok(self.users.scan(KeyRange::all(), Direction::Forward)?.collect::<Result<_, _>>()?)
    }

    /// The stored profile of any account, deactivated ones included (the admin API's view).
    pub fn stored_profile(&self, user_id: &UserId) -> Result<ProfileRecord> {
        Ok(self.profiles.get(&user_id.to_owned())?.unwrap_or_default())
    }

    /// Refuse a login by another proof than a local password (a JWT, the company directory)
    /// into a deactivated or locked account; `None` (no account yet) may log in.
    pub fn ensure_may_log_in(record: Option<&UserRecord>) -> Result<()> {
        match record {
            Some(record) if record.deactivated => {
                Err(Error::new(ErrorKind::UserDeactivated, "This account has been deactivated"))
            }
            Some(record) if record.locked => {
                Err(Error::new(ErrorKind::UserLocked, "User account has been locked"))
            }
            _ => Ok(()),
        }
    }

    /// Refuse a request of a locked account (`M_USER_LOCKED`, a soft logout: the client
    /// keeps its session for when the account is unlocked).
    pub fn ensure_not_locked(&self, user_id: &UserId) -> Result<()> {
        if self.get(user_id)?.is_some_and(|u| u.locked) {
            return Err(Error::new(ErrorKind::UserLocked, "User account has been locked"));
        }
        Ok(())
    }

    /// Refuse an action a suspended account may not take (MSC3823: `M_USER_SUSPENDED`).
    pub fn ensure_not_suspended(&self, user_id: &UserId, action: &str) -> Result<()> {
        self.standing(user_id)?.ensure_not_suspended(action)
    }

    /// What the account may do, from one read of its record (for a path that asks more than
    /// one of `ensure_not_suspended` and `is_shadow_banned`).
    pub fn standing(&self, user_id: &UserId) -> Result<Standing> {
        let record = self.get(user_id)?;
        Ok(Standing {
            suspended: record.as_ref().is_some_and(|u| u.suspended),
            shadow_banned: record.as_ref().is_some_and(|u| u.shadow_banned),
        })
    }

    /// Whether the account is shadow-banned: what it sends, invites and creates seems to
    /// succeed and reaches nobody.
    pub fn is_shadow_banned(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some_and(|u| u.shadow_banned))
    }

    /// The profile of a live local account; `None` for unknown or deactivated users.
    pub fn profile(&self, user_id: &UserId) -> Result<Option<ProfileRecord>> {
        match self.get(user_id)? {
            Some(u) if !u.deactivated => {
                Ok(Some(self.profiles.get(&user_id.to_owned())?.unwrap_or_default()))
            }
            _ => Ok(None),
        }
    }

    /// Every stored profile with its user, in user ID order; deactivated accounts included
    /// (callers check the account of the profiles they keep).
    pub fn all_profiles(&self) -> Result<Vec<(OwnedUserId, ProfileRecord)>> {
        Ok(self.profiles.scan(KeyRange::all(), Direction::Forward)?.collect::<Result<_, _>>()?)
    }

    /// Set (or clear, with `None` or "") the display name.
    pub fn set_displayname(&self, user_id: &UserId, displayname: Option<String>) -> Result<()> {
        if displayname.as_ref().is_some_and(|n| n.len() > MAX_DISPLAYNAME_LEN) {
            return Err(Error::invalid_param("Display name is too long (max 256)"));
        }
        let displayname = displayname.filter(|n| !n.is_empty());
        self.update_profile(user_id, |p| p.displayname.clone_from(&displayname))
    }

    /// Set (or clear, with `None`) the avatar URL.
    pub fn set_avatar_url(&self, user_id: &UserId, avatar_url: Option<OwnedMxcUri>) -> Result<()> {
        // An MXC URI's media ID has no length of its own; the profile goes to everyone who
        // looks the user up.
        if avatar_url.as_ref().is_some_and(|u| u.as_str().len() > MAX_AVATAR_URL_LEN) {
            return Err(Error::invalid_param(format!("Avatar URL is too long (max {MAX_AVATAR_URL_LEN})")));
        }
        self.update_profile(user_id, |p| p.avatar_url.clone_from(&avatar_url))
    }

    fn update_profile(&self, user_id: &UserId, change: impl Fn(&mut ProfileRecord)) -> Result<()> {
        if self.profile(user_id)?.is_none() {
            return Err(Error::not_found("Profile not found"));
        }
        // Read and write in one transaction: setting name and avatar at once (or from two
        // processes) cannot drop one of them.
        let user = user_id.to_owned();
        crate::storage::transaction::<_, Error>(self.profiles.store(), Durability::Synced, |tx| {
            let mut profile = self.profiles.get_in(tx, &user)?.unwrap_or_default();
            change(&mut profile);
            self.profiles.put_in(tx, &user, &profile)?;
            Ok(((), true))
        })
    }
}
