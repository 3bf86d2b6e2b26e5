//! Third-party identifiers (email addresses and phone numbers) on accounts. This server
//! sends no validation email or SMS and talks to no identity server: the only identifiers
//! accounts have are those a trusted source vouched for when the account was made (the
//! email address in the company directory, for accounts made at an LDAP login). Every way
//! for a client to add or bind one ends in the error the spec gives a server that does not
//! support the medium; clients (Element's settings pages among them) load the list
//! unconditionally and read these errors to hide what the server does not offer. A user may
//! delete their own. Owns the `threepids` table.

use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedUserId, UInt, UserId,
    thirdparty::{Medium as RumaMedium, ThirdPartyIdentifier, ThirdPartyIdentifierInit},
};

use super::clock::Clock;
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{THREEPIDS, ThreepidRecord},
    },
};

/// What a validation token would have been requested for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Registering a new account with the identifier.
    Registration,
    /// Adding the identifier to the requester's account.
    AddToAccount,
    /// Resetting the password of the account the identifier belongs to.
    PasswordReset,
}

/// Which medium a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    Email,
    PhoneNumber,
}

impl Medium {
    fn name(self) -> &'static str {
        match self {
            Self::Email => "Email addresses",
            Self::PhoneNumber => "Phone numbers",
        }
    }
}

pub struct ThirdPartyIds {
    table: Table<(OwnedUserId, String, String), ThreepidRecord>,
    clock: Arc<dyn Clock>,
}

fn ruma_time(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new(ms).unwrap_or_default())
}

impl ThirdPartyIds {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Self {
        Self { table: THREEPIDS.open(store), clock }
    }

    /// The identifiers on `user_id`'s account.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<ThirdPartyIdentifier>> {
        let mut found = Vec::new();
        let rows = self.table.scan_prefix(&user_id.to_owned(), Direction::Forward)?;
        for row in rows {
            let ((_, medium, address), record) = row?;
            found.push(
                ThirdPartyIdentifierInit {
                    address,
                    medium: RumaMedium::from(medium.as_str()),
                    validated_at: ruma_time(record.validated_ms),
                    added_at: ruma_time(record.added_ms),
                }
                .into(),
            );
        }
        Ok(found)
    }

    /// Queue an email address a trusted source vouched for (the company directory) onto an
    /// account, validated now. Addresses are kept lowercased, as Synapse keeps them.
    pub fn add_verified_email_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        address: &str,
    ) -> Result<()> {
        let now_ms = self.clock.now_ms();
        let key = (user_id.to_owned(), "email".to_owned(), address.trim().to_lowercase());
        let record = ThreepidRecord { added_ms: now_ms, validated_ms: now_ms };
        Ok(self.table.put(batch, &key, &record)?)
    }

    /// `POST /account/3pid/delete`: the identifier goes from the account. Returns whether an
    /// identity server unbound it: none is ever used, so never.
    pub fn delete(&self, user_id: &UserId, medium: &str, address: &str) -> Result<bool> {
        let key = (user_id.to_owned(), medium.to_owned(), address.trim().to_lowercase());
        if self.table.get(&key)?.is_some() {
            self.table.remove(&key)?;
        }
        Ok(false)
    }

    /// A `requestToken` call: the server would send a token to the identifier. No medium is
    /// supported, so registration and adding answer `M_THREEPID_MEDIUM_NOT_SUPPORTED`, and a
    /// password reset finds no account with the identifier (`M_THREEPID_NOT_FOUND`), which
    /// is true and reveals nothing.
    pub fn request_token(&self, medium: Medium, purpose: TokenPurpose) -> Result<std::convert::Infallible> {
        use ruma::api::error::ErrorKind;
        Err(match purpose {
            TokenPurpose::PasswordReset => Error::new(
                ErrorKind::ThreepidNotFound,
                "No account on this server has that third-party identifier",
            ),
            TokenPurpose::Registration | TokenPurpose::AddToAccount => Error::new(
                ErrorKind::ThreepidMediumNotSupported,
                format!("{} are not supported on this server", medium.name()),
            ),
        })
    }

    /// `POST /account/3pid/add`: adding needs a session validated through a token this server
    /// never sends.
    pub fn add(&self, _user_id: &UserId) -> Result<()> {
        Err(Error::new(
            ruma::api::error::ErrorKind::ThreepidAuthFailed,
            "No validated third-party identifier session found",
        ))
    }

    /// `POST /account/3pid/bind`: binding goes through an identity server, and this server
    /// trusts none.
    pub fn bind(&self, _user_id: &UserId) -> Result<()> {
        Err(Error::new(
            ruma::api::error::ErrorKind::ServerNotTrusted,
            "This server does not use identity servers",
        ))
    }

    /// `POST /account/3pid/delete` and `/unbind`: nothing is bound, so there is nothing an
    /// identity server could be asked to unbind. Returns whether an unbind happened.
    pub fn remove(&self, _user_id: &UserId) -> Result<bool> {
        Ok(false)
    }
}
