//! The OAuth 2.0 API's protocol rules, without I/O: client metadata as dynamic client
//! registration (RFC 7591) receives it and the spec's redirect URI rules (RFC 8252 for native
//! apps), the Matrix scope tokens (stable and MSC2967's unstable spelling), PKCE (RFC 7636,
//! `S256` only), and how a redirect URI presented at authorization matches a registered one.

use base64::Engine as _;
use serde_json::{Map, Value as JsonValue};
use sha2::{Digest as _, Sha256};

/// Full client-server API access, as the spec spells it and as MSC2967 did.
pub const SCOPE_API: &str = "urn:matrix:client:api:*";
pub const SCOPE_API_UNSTABLE: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
/// The device scope's prefixes; the device ID follows.
pub const SCOPE_DEVICE: &str = "urn:matrix:client:device:";
pub const SCOPE_DEVICE_UNSTABLE: &str = "urn:matrix:org.matrix.msc2967.client:device:";

/// Longest scope string accepted.
const MAX_SCOPE_LEN: usize = 2048;
/// Most redirect URIs one client may register, and the longest URI.
const MAX_REDIRECT_URIS: usize = 20;
const MAX_URI_LEN: usize = 2048;
/// Longest client name kept.
const MAX_CLIENT_NAME_CHARS: usize = 200;
/// Longest device ID a client may allocate (the server's own device ID limit applies too).
const MAX_DEVICE_ID_LEN: usize = 255;

/// A rule of the protocol broken, with the RFC's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthViolation {
    /// `invalid_redirect_uri`, `invalid_client_metadata`, `invalid_scope`, `invalid_request` …
    pub code: &'static str,
    pub description: String,
}

fn violation(code: &'static str, description: impl Into<String>) -> OAuthViolation {
    OAuthViolation { code, description: description.into() }
}

/// Whether the client is a web page or an app on the user's device: it decides which
/// redirect URIs it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplicationType {
    Web,
    Native,
}

/// A client's registration as this server keeps it: only what it understands and uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMetadata {
    pub client_uri: String,
    pub client_name: Option<String>,
    pub logo_uri: Option<String>,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub application_type: ApplicationType,
    /// Of those it asked for, the grants this server has: `authorization_code`, `refresh_token`.
    pub grant_types: Vec<String>,
}

impl ClientMetadata {
    /// The registration answer's body (RFC 7591 §3.2.1): the metadata as registered, with the
    /// values this server did not take left out.
    pub fn to_json(&self, client_id: &str) -> JsonValue {
        let mut out = Map::new();
        out.insert("client_id".into(), client_id.into());
        out.insert("client_uri".into(), self.client_uri.clone().into());
        for (key, value) in [
            ("client_name", &self.client_name),
            ("logo_uri", &self.logo_uri),
            ("tos_uri", &self.tos_uri),
            ("policy_uri", &self.policy_uri),
        ] {
            if let Some(value) = value {
                out.insert(key.into(), value.clone().into());
            }
        }
        out.insert("redirect_uris".into(), self.redirect_uris.clone().into());
        out.insert("token_endpoint_auth_method".into(), "none".into());
        out.insert("response_types".into(), vec!["code"].into());
        out.insert("grant_types".into(), self.grant_types.clone().into());
        let application_type = match self.application_type {
            ApplicationType::Web => "web",
            ApplicationType::Native => "native",
        };
        out.insert("application_type".into(), application_type.into());
        JsonValue::Object(out)
    }

    /// A stable ID for this exact registration: the same metadata registered twice (every
    /// install of an app registers at each sign-in) is one client.
    pub fn client_id(&self) -> String {
        let canonical = self.to_json("").to_string();
        let digest = Sha256::digest(canonical.as_bytes());
        // 20 bytes in lower-case base32-ish hex: short, URL-safe, case-insensitive.
        digest[..20].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What the consent page calls the client: its name, else its URI's host.
    pub fn display_name(&self) -> String {
        self.client_name.clone().unwrap_or_else(|| host_of(&self.client_uri).unwrap_or_default())
    }

    /// Whether `presented` (at authorization or token exchange) names one of the registered
    /// redirect URIs. Exact string match, except that a native app's loopback URI (`http`
    /// on `localhost`, `127.0.0.1` or `[::1]`, registered without a port) matches on any port.
    pub fn redirect_uri_matches(&self, presented: &str) -> bool {
        if self.redirect_uris.iter().any(|r| r == presented) {
            return true;
        }
        if self.application_type != ApplicationType::Native {
            return false;
        }
        let Ok(presented) = url::Url::parse(presented) else { return false };
        if presented.scheme() != "http" || presented.port().is_none() {
            return false;
        }
        let mut portless = presented.clone();
        if portless.set_port(None).is_err() {
            return false;
        }
        self.redirect_uris.iter().any(|r| {
            url::Url::parse(r).is_ok_and(|r| r.port().is_none() && is_loopback_http(&r) && r == portless)
        })
    }
}

fn host_of(uri: &str) -> Option<String> {
    url::Url::parse(uri).ok().and_then(|u| u.host_str().map(str::to_owned))
}

fn is_loopback_http(url: &url::Url) -> bool {
    url.scheme() == "http" && matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// `host` is `base` or a subdomain of it.
fn same_or_subdomain(host: &str, base: &str) -> bool {
    host == base || host.strip_suffix(base).is_some_and(|prefix| prefix.ends_with('.'))
}

/// An `https` URL without credentials whose host is the client URI's host or below it;
/// `http` is allowed on loopback hosts, for clients run on the user's own machine.
fn check_web_uri(field: &str, uri: &str, base_host: &str, code: &'static str) -> Result<(), OAuthViolation> {
    if uri.len() > MAX_URI_LEN {
        return Err(violation(code, format!("{field} is too long")));
    }
    let url = url::Url::parse(uri).map_err(|_| violation(code, format!("{field} is not an absolute URI")))?;
    if url.scheme() != "https" && !is_loopback_http(&url) {
        return Err(violation(code, format!("{field} must use https")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(violation(code, format!("{field} may not carry a user or password")));
    }
    if url.fragment().is_some() {
        return Err(violation(code, format!("{field} may not have a fragment")));
    }
    let host = url.host_str().unwrap_or_default();
    if !same_or_subdomain(host, base_host) {
        return Err(violation(
            code,
            format!("{field} must be on the host of client_uri ({base_host}) or below it"),
        ));
    }
    Ok(())
}

/// A native app's redirect URI (RFC 8252 §7): a private-use scheme named after the client
/// URI's host reversed, with no authority; `http` on a loopback host without a port; or a
/// claimed `https` URI as a web client's.
fn check_native_redirect(uri: &str, base_host: &str) -> Result<(), OAuthViolation> {
    const CODE: &str = "invalid_redirect_uri";
    if uri.len() > MAX_URI_LEN {
        return Err(violation(CODE, "redirect URI is too long"));
    }
    let url = url::Url::parse(uri).map_err(|_| violation(CODE, "redirect URI is not an absolute URI"))?;
    if url.fragment().is_some() {
        return Err(violation(CODE, "a redirect URI may not have a fragment"));
    }
    match url.scheme() {
        "https" => check_web_uri("redirect URI", uri, base_host, CODE),
        "http" => {
            if !is_loopback_http(&url) {
                return Err(violation(CODE, "an http redirect URI must be on localhost, 127.0.0.1 or [::1]"));
            }
            if url.port().is_some() {
                return Err(violation(CODE, "a loopback redirect URI is registered without a port"));
            }
            Ok(())
        }
        scheme => {
            // `com.example.app:/callback`: no `//` authority after the scheme.
            if uri[scheme.len() + 1..].starts_with("//") || url.has_host() {
                return Err(violation(CODE, "a private-use scheme redirect URI may not have an authority"));
            }
            let reversed: Vec<&str> = base_host.split('.').rev().collect();
            let reversed = reversed.join(".");
            if !(scheme == reversed || scheme.starts_with(&format!("{reversed}."))) {
                return Err(violation(
                    CODE,
                    format!(
                        "the redirect URI's scheme must be the client_uri host reversed ({reversed}) or start with it"
                    ),
                ));
            }
            Ok(())
        }
    }
}

fn optional_string(body: &Map<String, JsonValue>, key: &str) -> Result<Option<String>, OAuthViolation> {
    match body.get(key) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(JsonValue::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(violation("invalid_client_metadata", format!("{key} must be a string"))),
    }
}

fn string_list(body: &Map<String, JsonValue>, key: &str) -> Result<Option<Vec<String>>, OAuthViolation> {
    match body.get(key) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(JsonValue::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| violation("invalid_client_metadata", format!("{key} must hold strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(violation("invalid_client_metadata", format!("{key} must be an array"))),
    }
}

/// Read and check a dynamic client registration (RFC 7591 §2 and the spec's rules). Values
/// this server does not understand are ignored, as the spec says; localized variants
/// (`client_name#fr`) are not kept.
pub fn parse_client_metadata(body: &JsonValue) -> Result<ClientMetadata, OAuthViolation> {
    let JsonValue::Object(body) = body else {
        return Err(violation("invalid_client_metadata", "the body must be a JSON object"));
    };
    let client_uri = optional_string(body, "client_uri")?
        .ok_or_else(|| violation("invalid_client_metadata", "client_uri is required"))?;
    let parsed = url::Url::parse(&client_uri)
        .map_err(|_| violation("invalid_client_metadata", "client_uri is not an absolute URI"))?;
    let base_host = parsed
        .host_str()
        .ok_or_else(|| violation("invalid_client_metadata", "client_uri has no host"))?
        .to_owned();
    check_web_uri("client_uri", &client_uri, &base_host, "invalid_client_metadata")?;
    let mut uris = Vec::new();
    for key in ["logo_uri", "tos_uri", "policy_uri"] {
        let value = optional_string(body, key)?;
        if let Some(uri) = &value {
            check_web_uri(key, uri, &base_host, "invalid_client_metadata")?;
        }
        uris.push(value);
    }
    let client_name =
        optional_string(body, "client_name")?.map(|name| name.chars().take(MAX_CLIENT_NAME_CHARS).collect());
    let application_type = match optional_string(body, "application_type")?.as_deref() {
        None | Some("web") => ApplicationType::Web,
        Some("native") => ApplicationType::Native,
        Some(other) => {
            return Err(violation("invalid_client_metadata", format!("unknown application_type {other}")));
        }
    };
    match optional_string(body, "token_endpoint_auth_method")?.as_deref() {
        None | Some("none") => {}
        Some(other) => {
            return Err(violation(
                "invalid_client_metadata",
                format!(
                    "token_endpoint_auth_method {other} is not supported here: only public clients (none)"
                ),
            ));
        }
    }
    let grant_types =
        string_list(body, "grant_types")?.unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    let grant_types: Vec<String> = ["authorization_code", "refresh_token"]
        .into_iter()
        .filter(|g| grant_types.iter().any(|asked| asked == g))
        .map(str::to_owned)
        .collect();
    let response_types = string_list(body, "response_types")?.unwrap_or_else(|| vec!["code".to_owned()]);
    let redirect_uris = string_list(body, "redirect_uris")?.unwrap_or_default();
    if grant_types.iter().any(|g| g == "authorization_code") {
        if !response_types.iter().any(|r| r == "code") {
            return Err(violation("invalid_client_metadata", "response_types must include code"));
        }
        if redirect_uris.is_empty() {
            return Err(violation("invalid_redirect_uri", "at least one redirect URI is required"));
        }
    } else {
        return Err(violation("invalid_client_metadata", "grant_types must include authorization_code"));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(violation("invalid_redirect_uri", "too many redirect URIs"));
    }
    for uri in &redirect_uris {
        match application_type {
            ApplicationType::Web => check_web_uri("redirect URI", uri, &base_host, "invalid_redirect_uri")?,
            ApplicationType::Native => check_native_redirect(uri, &base_host)?,
        }
    }
    let mut uris = uris.into_iter();
    Ok(ClientMetadata {
        client_uri,
        client_name,
        logo_uri: uris.next().flatten(),
        tos_uri: uris.next().flatten(),
        policy_uri: uris.next().flatten(),
        redirect_uris,
        application_type,
        grant_types,
    })
}

/// A requested scope, read: full API access asked for, and the one device it allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub device_id: String,
    /// The scope granted, in the spelling asked (stable or unstable): the API token and the
    /// device token; tokens this server does not know are left out.
    pub granted: String,
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

/// RFC 3986's unreserved characters, which a client-allocated device ID must keep to.
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// Read a login scope: it must ask for full API access and exactly one device.
pub fn parse_scope(scope: &str) -> Result<Scope, OAuthViolation> {
    const CODE: &str = "invalid_scope";
    if scope.len() > MAX_SCOPE_LEN {
        return Err(violation(CODE, "the scope is too long"));
    }
    let mut api = None;
    let mut device = None;
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if !token.chars().all(is_scope_char) {
            return Err(violation(CODE, "the scope holds a character RFC 6749 does not allow"));
        }
        if token == SCOPE_API || token == SCOPE_API_UNSTABLE {
            api = Some(token);
        } else if let Some(id) =
            token.strip_prefix(SCOPE_DEVICE).or_else(|| token.strip_prefix(SCOPE_DEVICE_UNSTABLE))
            && device.replace((token, id)).is_some()
        {
            return Err(violation(CODE, "the scope may allocate only one device"));
        }
    }
    let api = api.ok_or_else(|| violation(CODE, format!("the scope must include {SCOPE_API}")))?;
    let (device_token, device_id) = device
        .ok_or_else(|| violation(CODE, format!("the scope must include one {SCOPE_DEVICE}<device_id>")))?;
    if device_id.is_empty() || device_id.len() > MAX_DEVICE_ID_LEN || !device_id.chars().all(is_unreserved) {
        return Err(violation(
            CODE,
            "the device ID must be 1 to 255 characters of A-Z, a-z, 0-9, -, ., _ and ~",
        ));
    }
    Ok(Scope { device_id: device_id.to_owned(), granted: format!("{api} {device_token}") })
}

/// RFC 7636 §4.1: a verifier is 43 to 128 unreserved characters.
pub fn valid_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len()) && verifier.chars().all(is_unreserved)
}

/// A `S256` challenge as a client sends it: 43 characters of unpadded URL-safe base64.
pub fn valid_code_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && challenge.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `verifier` is the one `challenge` was made from (`S256`).
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !valid_code_verifier(verifier) {
        return false;
    }
    let digest = Sha256::digest(verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    // Both are public once the code is spent; a plain comparison leaks nothing worth having.
    computed == challenge
}

/// Where the authorization answer goes: `redirect_uri` with the parameters in its query or
/// its fragment (`response_mode`).
pub fn authorization_redirect(redirect_uri: &str, fragment: bool, params: &[(&str, &str)]) -> String {
    let encoded: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    if fragment {
        format!("{redirect_uri}#{encoded}")
    } else if redirect_uri.contains('?') {
        format!("{redirect_uri}&{encoded}")
    } else {
        format!("{redirect_uri}?{encoded}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn native(redirects: &[&str]) -> Result<ClientMetadata, OAuthViolation> {
        parse_client_metadata(&json!({
            "client_uri": "https://example.com/",
            "redirect_uris": redirects,
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        }))
    }

    fn web(redirects: &[&str]) -> Result<ClientMetadata, OAuthViolation> {
        parse_client_metadata(&json!({
            "client_uri": "https://example.com/",
            "redirect_uris": redirects,
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"],
        }))
    }

    #[test]
    fn the_spec_examples_of_native_redirect_uris() {
        for good in [
            "com.example.app:/callback",
            "com.example:/",
            "com.example:callback",
            "http://localhost/callback",
            "http://127.0.0.1/callback",
            "http://[::1]/callback",
        ] {
            native(&[good]).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
        for bad in [
            "example:/callback",
            "com.example.app://callback",
            "https://localhost/callback",
            "http://localhost:1234/callback",
            "com.example.app:/callback#frag",
        ] {
            assert_eq!(native(&[bad]).unwrap_err().code, "invalid_redirect_uri", "{bad}");
        }
    }

    #[test]
    fn the_spec_examples_of_web_redirect_uris() {
        for good in [
            "https://example.com/callback",
            "https://app.example.com/callback",
            "https://example.com:5173/?query=value",
        ] {
            web(&[good]).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
        for bad in [
            "https://example.com/callback#fragment",
            "http://example.com/callback",
            "https://app.com/callback",
            "https://user:pw@example.com/",
            "https://notexample.com/",
        ] {
            assert_eq!(web(&[bad]).unwrap_err().code, "invalid_redirect_uri", "{bad}");
        }
    }

    #[test]
    fn registrations_keep_only_what_is_understood_and_dedupe() {
        let a = web(&["https://example.com/cb"]).unwrap();
        assert_eq!(a.grant_types, ["authorization_code", "refresh_token"]);
        assert_eq!(a.to_json("x")["token_endpoint_auth_method"], "none");
        let b = web(&["https://example.com/cb"]).unwrap();
        assert_eq!(a.client_id(), b.client_id());
        let c = web(&["https://example.com/other"]).unwrap();
        assert_ne!(a.client_id(), c.client_id());
        assert!(parse_client_metadata(&json!({"redirect_uris": ["https://example.com/"]})).is_err());
        let secret = json!({"client_uri": "https://example.com/", "redirect_uris": ["https://example.com/"],
            "token_endpoint_auth_method": "client_secret_basic"});
        assert_eq!(parse_client_metadata(&secret).unwrap_err().code, "invalid_client_metadata");
        let logo = json!({"client_uri": "https://example.com/", "redirect_uris": ["https://example.com/"],
            "logo_uri": "https://evil.test/logo.png"});
        assert!(parse_client_metadata(&logo).is_err());
    }

    #[test]
    fn loopback_redirects_match_on_any_port() {
        let client = native(&["http://127.0.0.1/callback", "com.example.app:/cb"]).unwrap();
        assert!(client.redirect_uri_matches("http://127.0.0.1:53124/callback"));
        assert!(client.redirect_uri_matches("com.example.app:/cb"));
        assert!(!client.redirect_uri_matches("http://127.0.0.1:53124/other"));
        assert!(!client.redirect_uri_matches("com.example.app:/cb2"));
        let web = web(&["https://example.com/cb"]).unwrap();
        assert!(!web.redirect_uri_matches("https://example.com:444/cb"));
    }

    #[test]
    fn scopes_need_the_api_and_one_device() {
        let s = parse_scope("urn:matrix:client:api:* urn:matrix:client:device:AAABBBCCCDDD").unwrap();
        assert_eq!(s.device_id, "AAABBBCCCDDD");
        let u = parse_scope(
            "openid urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:x-1",
        )
        .unwrap();
        assert_eq!(
            u.granted,
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:x-1"
        );
        for bad in [
            "urn:matrix:client:device:A",
            "urn:matrix:client:api:*",
            "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B",
            "urn:matrix:client:api:* urn:matrix:client:device:a/b",
            "urn:matrix:client:api:* urn:matrix:client:device:",
            "urn:matrix:client:api:* \"quoted\" urn:matrix:client:device:A",
        ] {
            assert_eq!(parse_scope(bad).unwrap_err().code, "invalid_scope", "{bad}");
        }
    }

    #[test]
    fn pkce_s256_as_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(valid_code_challenge(challenge));
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK", challenge));
        assert!(!pkce_matches("short", challenge));
    }

    #[test]
    fn answers_go_in_the_fragment_or_the_query() {
        assert_eq!(
            authorization_redirect("https://a.example/cb", true, &[("code", "c"), ("state", "s t")]),
            "https://a.example/cb#code=c&state=s+t"
        );
        assert_eq!(
            authorization_redirect("https://a.example/cb?x=1", false, &[("code", "c")]),
            "https://a.example/cb?x=1&code=c"
        );
    }
}
