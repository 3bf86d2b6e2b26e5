//! Rules for user IDs: which localparts may be registered, and how a login identifier names
//! an account.

use ruma::{OwnedUserId, ServerName, UserId};

/// The longest a full user ID may be, in bytes (spec: "must not exceed 255 characters").
pub const MAX_USER_ID_LEN: usize = 255;

/// Why a requested localpart cannot be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalpartError {
    Empty,
    InvalidCharacters,
    TooLong,
    /// Leading `_` is reserved for application services, as on Synapse.
    Reserved,
    /// All-digit names are what guest accounts get, as on Synapse.
    Numeric,
}

impl std::fmt::Display for LocalpartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "User ID cannot be empty",
            Self::InvalidCharacters => "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            Self::TooLong => "User ID may not be longer than 255 characters",
            Self::Reserved => "User ID may not begin with _",
            Self::Numeric => "Numeric user IDs are reserved for guest users",
        })
    }
}

/// The user ID a new account with `localpart` would get, if the localpart is acceptable for
/// registration: the spec's current grammar (`a-z 0-9 . _ = - / +`), no historical forms.
pub fn registrable_user_id(localpart: &str, server: &ServerName) -> Result<OwnedUserId, LocalpartError> {
    if localpart.is_empty() {
        return Err(LocalpartError::Empty);
    }
    if !localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(LocalpartError::InvalidCharacters);
    }
    if localpart.starts_with('_') {
        return Err(LocalpartError::Reserved);
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LocalpartError::Numeric);
    }
    let full = format!("@{localpart}:{server}");
    if full.len() > MAX_USER_ID_LEN {
        return Err(LocalpartError::TooLong);
    }
    UserId::parse(full).map_err(|_| LocalpartError::InvalidCharacters)
}

/// The local account a login identifier (`alice` or `@Alice:example.org`) refers to, if it
/// names one on `server`. Localparts are matched case-insensitively by lower-casing, since
/// registration only creates lower-case names.
pub fn resolve_login_user(identifier: &str, server: &ServerName) -> Option<OwnedUserId> {
    let localpart = match identifier.strip_prefix('@') {
        Some(rest) => {
            let (localpart, host) = rest.split_once(':')?;
            if !host.eq_ignore_ascii_case(server.as_str()) {
                return None;
            }
            localpart
        }
        None => identifier,
    };
    if localpart.is_empty() {
        return None;
    }
    UserId::parse(format!("@{}:{server}", localpart.to_lowercase())).ok()
}

/// A localpart for a name from elsewhere (an identity provider's user name), as the spec's
/// appendix "Mapping from other character sets" suggests: lower-cased, and every byte of its
/// UTF-8 form outside `a-z 0-9 . _ - / +`, and `=` itself, written as `=` and two hex digits
/// (`Jörg` becomes `j=c3=b6rg`). A leading `_`, reserved for application services, becomes
/// `=5f`. The result may still be refused (empty, all digits, too long).
pub fn localpart_from_external(name: &str) -> String {
    let mut out = String::new();
    for byte in name.to_lowercase().bytes() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' | b'+' => out.push(char::from(byte)),
            other => out.push_str(&format!("={other:02x}")),
        }
    }
    if let Some(rest) = out.strip_prefix('_') {
        out = format!("=5f{rest}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_names_map_to_registrable_localparts() {
        for (name, expected) in [
            ("Alice.Smith", "alice.smith"),
            ("Jörg", "j=c3=b6rg"),
            ("a b=c", "a=20b=3dc"),
            ("_bot", "=5fbot"),
            ("DOMAIN\\user", "domain=5cuser"),
        ] {
            let localpart = localpart_from_external(name);
            assert_eq!(localpart, expected, "{name}");
            assert!(registrable_user_id(&localpart, server()).is_ok(), "{localpart}");
        }
    }

    fn server() -> &'static ServerName {
        <&ServerName>::try_from("example.org").unwrap()
    }

    #[test]
    fn registrable_localparts() {
        let cases: &[(&str, Result<&str, LocalpartError>)] = &[
            ("alice", Ok("@alice:example.org")),
            ("a.b_c=d-e/f+g", Ok("@a.b_c=d-e/f+g:example.org")),
            ("bob2", Ok("@bob2:example.org")),
            ("", Err(LocalpartError::Empty)),
            ("Alice", Err(LocalpartError::InvalidCharacters)),
            ("bad name", Err(LocalpartError::InvalidCharacters)),
            ("a:b", Err(LocalpartError::InvalidCharacters)),
            ("_bridge", Err(LocalpartError::Reserved)),
            ("12345", Err(LocalpartError::Numeric)),
        ];
        for (input, expected) in cases {
            let got = registrable_user_id(input, server());
            match expected {
                Ok(id) => assert_eq!(got.as_ref().map(|u| u.as_str()), Ok(*id), "{input}"),
                Err(e) => assert_eq!(got.as_ref().err(), Some(e), "{input}"),
            }
        }
        assert_eq!(registrable_user_id(&"a".repeat(250), server()), Err(LocalpartError::TooLong));
    }

    #[test]
    fn login_identifiers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("alice", Some("@alice:example.org")),
            ("ALICE", Some("@alice:example.org")),
            ("@Alice:example.org", Some("@alice:example.org")),
            ("@alice:EXAMPLE.org", Some("@alice:example.org")),
            ("@alice:other.org", None),
            ("@alice", None),
            ("", None),
        ];
        for (input, expected) in cases {
            let got = resolve_login_user(input, server());
            assert_eq!(got.as_deref().map(|u| u.as_str()), *expected, "{input}");
        }
    }
}
