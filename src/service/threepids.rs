//! Third-party identifiers (email addresses and phone numbers) on accounts. This server
//! sends no email or SMS and talks to no identity server, so no account has one: the list is
//! empty, and every way of adding or binding one ends in the error the spec gives a server
//! that does not support the medium. Clients (Element's settings pages among them) load the
//! list unconditionally and read these errors to hide what the server does not offer. Owns
//! no table; the place where stored identifiers will live when a medium is supported.

use ruma::{UserId, thirdparty::ThirdPartyIdentifier};

use crate::{Error, Result};

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

#[derive(Default)]
pub struct ThirdPartyIds;

impl ThirdPartyIds {
    pub fn new() -> Self {
        Self
    }

    /// The identifiers on `user_id`'s account.
    pub fn list(&self, _user_id: &UserId) -> Result<Vec<ThirdPartyIdentifier>> {
        Ok(Vec::new())
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
