//! Single sign-on settings: the OpenID Connect identity providers (`[[global.identity_providers]]`,
//! in the shape of Synapse's `oidc_providers`), `sso_only`, `[global.sso]` and
//! `[global.login_via_existing_session]`, with their checks; and [`ClaimTemplate`], the small
//! template language of the user mapping (`{{ user.preferred_username | lower }}`).

use std::{collections::HashSet, fmt, path::PathBuf};

use ruma::OwnedMxcUri;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{Config, ConfigDuration};

/// One `[[global.identity_providers]]` entry: an OpenID Connect provider users sign in with.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// The provider's ID in URLs (`/login/sso/redirect/{id}`) and in the accounts linked to
    /// it: never change it once users signed in (Synapse's `idp_id`).
    #[serde(alias = "idp_id")]
    pub id: String,
    /// The name clients show ("Continue with <name>"); the ID when unset.
    #[serde(default, alias = "idp_name", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An `mxc://` icon clients show beside the name.
    #[serde(default, alias = "idp_icon", skip_serializing_if = "Option::is_none")]
    pub icon: Option<OwnedMxcUri>,
    /// A brand clients know an icon for (`apple`, `facebook`, `github`, `gitlab`, `google`,
    /// `twitter`) or any other name.
    #[serde(default, alias = "idp_brand", skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// The provider's issuer URL, exactly as its ID tokens name it; discovery reads
    /// `<issuer>/.well-known/openid-configuration`. `https://`, or `http://` on a loopback
    /// address only.
    pub issuer: String,
    /// Whether to read the endpoints from the discovery document (otherwise the four
    /// `*_endpoint`/`jwks_uri` keys give them).
    #[serde(default = "yes")]
    pub discover: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// This server's client ID at the provider.
    pub client_id: String,
    /// The client secret, or a file holding it (`client_secret_path`, read at start-up;
    /// surrounding whitespace is ignored). Neither: a public client (`client_auth_method =
    /// "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_path: Option<PathBuf>,
    /// How the token request authenticates: `client_secret_basic` (the default with a
    /// secret), `client_secret_post`, or `none` (the default without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth_method: Option<ClientAuthMethod>,
    /// Scopes asked for; must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// PKCE (S256): `auto` (when the discovery document offers S256), `always`, `never`.
    #[serde(default)]
    pub pkce_method: PkceMethod,
    /// Where the claims come from: `auto`, the ID token; `userinfo_endpoint`, the ID token
    /// with the userinfo endpoint's answer on top (for providers that keep profile claims
    /// out of ID tokens).
    #[serde(default)]
    pub user_profile_method: UserProfileMethod,
    /// How claims become a Matrix account.
    #[serde(default)]
    pub user_mapping: UserMappingConfig,
    /// Claims a user must have to sign in, e.g. `groups` containing `chat-users`; all must
    /// hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attribute_requirements: Vec<AttributeRequirement>,
    /// Whether a first sign-in whose mapped user ID names an existing account that no
    /// provider account is linked to links to it (for accounts made before SSO, by a
    /// provider you trust with that name). Off: such a sign-in is refused.
    #[serde(default)]
    pub allow_existing_users: bool,
    /// Whether a first sign-in creates the account (whatever `allow_registration` says).
    /// Off: only linked (or, with `allow_existing_users`, existing) accounts may sign in.
    #[serde(default = "yes")]
    pub enable_registration: bool,
    /// Whether the provider may end sessions through back-channel logout
    /// (`<base>/_synapse/client/oidc/backchannel_logout`, to register at the provider).
    #[serde(default)]
    pub backchannel_logout_enabled: bool,
    /// With a session ID (`sid`) in the logout token, end the sessions of that provider
    /// session whoever they belong to, without comparing `sub` (for providers whose logout
    /// tokens carry another subject than their ID tokens).
    #[serde(default)]
    pub backchannel_logout_ignore_sub: bool,
    /// A PEM file of CA certificates to trust for this provider's HTTPS (besides the public
    /// roots), for a provider with a certificate from the company's own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn default_scopes() -> Vec<String> {
    vec!["openid".to_owned(), "profile".to_owned()]
}

/// `client_auth_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    None,
}

/// `pkce_method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PkceMethod {
    #[default]
    Auto,
    Always,
    Never,
}

/// `user_profile_method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserProfileMethod {
    #[default]
    Auto,
    UserinfoEndpoint,
}

/// `[global.identity_providers.user_mapping]`: templates over the provider's claims
/// (`{{ user.<claim> }}`, with the filters `lower`, `upper`, `trim` and
/// `localpart_from_email`). The account is always keyed by the provider's `sub`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserMappingConfig {
    /// The new account's localpart; lower-cased, and characters a user ID cannot hold are
    /// escaped as the spec's "mapping from other character sets" says.
    pub localpart_template: ClaimTemplate,
    /// The new account's display name; empty: the localpart.
    pub display_name_template: ClaimTemplate,
    /// An email address for the account: added to it as a verified third-party identifier
    /// when the account is made or linked, and kept with the link; empty: none.
    pub email_template: Option<ClaimTemplate>,
}

impl Default for UserMappingConfig {
    fn default() -> Self {
        Self {
            localpart_template: ClaimTemplate::parse("{{ user.preferred_username }}")
                .expect("the default template parses"),
            display_name_template: ClaimTemplate::parse("{{ user.name }}")
                .expect("the default template parses"),
            email_template: None,
        }
    }
}

/// One claim requirement: the claim `attribute` must equal `value` (or contain it, when the
/// claim is a list), or match one of `one_of`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeRequirement {
    pub attribute: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

impl AttributeRequirement {
    /// Whether the claims meet it.
    pub fn holds(&self, claims: &serde_json::Map<String, JsonValue>) -> bool {
        let accepted = |v: &str| match (&self.value, &self.one_of) {
            (Some(value), _) => v == value,
            (None, Some(one_of)) => one_of.iter().any(|o| o == v),
            (None, None) => false,
        };
        match claims.get(&self.attribute) {
            Some(JsonValue::String(s)) => accepted(s),
            Some(JsonValue::Array(items)) => items.iter().any(|i| i.as_str().is_some_and(accepted)),
            _ => false,
        }
    }
}

/// `[global.sso]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SsoConfig {
    /// Prefixes of client URLs (`redirectUrl`) that receive their login token at once.
    /// Any other URL gets a page first that names the site and asks the user to continue,
    /// so a link made by someone else cannot send them a token for your account (Synapse's
    /// `sso.client_whitelist`). Put your Element Web's URL here, e.g.
    /// `"https://chat.example.com/"`.
    pub client_whitelist: Vec<String>,
}

/// `[global.login_via_existing_session]`: `POST /_matrix/client/v1/login/get_token`, with
/// which a signed-in client makes a one-time token to sign in another device (Synapse's
/// keys).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LoginViaExistingSessionConfig {
    /// Off by default.
    pub enabled: bool,
    /// Whether the user must authenticate again (password or single sign-on) for each
    /// token.
    pub require_ui_auth: bool,
    /// How long a token is valid, e.g. `"5m"`.
    pub token_timeout: ConfigDuration,
}

/// `[global.oauth]`: the built-in OAuth 2.0 authorization server of the spec's OAuth 2.0
/// API (MSC3861 and companions), which Element X signs in with. Users sign in on this
/// server's own page with their password (local or the directory's) or through one of the
/// `identity_providers`; each client session is a device. Off by default: then
/// `GET /_matrix/client/v1/auth_metadata` answers 404 and only the legacy API is offered.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    pub enabled: bool,
    /// How long a browser stays signed in to the sign-in and account pages, e.g. `"12h"`.
    pub browser_session_lifetime: ConfigDuration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self { enabled: false, browser_session_lifetime: ConfigDuration::from_millis(12 * 3_600_000) }
    }
}

impl Default for LoginViaExistingSessionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            require_ui_auth: true,
            token_timeout: ConfigDuration::from_millis(5 * 60 * 1000),
        }
    }
}

impl IdentityProviderConfig {
    /// The name clients show.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    /// The token endpoint's client authentication.
    pub fn auth_method(&self) -> ClientAuthMethod {
        self.client_auth_method.unwrap_or(
            if self.client_secret.is_some() || self.client_secret_path.is_some() {
                ClientAuthMethod::ClientSecretBasic
            } else {
                ClientAuthMethod::None
            },
        )
    }

    fn check(&self) -> Result<(), String> {
        let key = |name: &str| format!("identity_providers[{}].{name}", self.id);
        if self.id.is_empty()
            || self.id.len() > 255
            || !self.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(format!(
                "invalid value for key `identity_providers.id`: `{}` must be 1 to 255 letters, digits, \
                 `-`, `.`, `_` or `~`",
                self.id
            ));
        }
        check_provider_url(&key("issuer"), &self.issuer)?;
        let endpoints = [
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("userinfo_endpoint", &self.userinfo_endpoint),
            ("jwks_uri", &self.jwks_uri),
        ];
        for (name, url) in endpoints {
            if let Some(url) = url {
                check_provider_url(&key(name), url)?;
            } else if !self.discover && name != "userinfo_endpoint" {
                return Err(format!("missing key `{}`: needed when `discover` is false", key(name)));
            }
        }
        if self.client_id.is_empty() {
            return Err(format!("invalid value for key `{}`: must not be empty", key("client_id")));
        }
        if self.client_secret.is_some() && self.client_secret_path.is_some() {
            return Err(format!(
                "keys `{}` and `{}` are exclusive: give one",
                key("client_secret"),
                key("client_secret_path")
            ));
        }
        let has_secret = self.client_secret.is_some() || self.client_secret_path.is_some();
        match (self.auth_method(), has_secret) {
            (ClientAuthMethod::None, true) => {
                return Err(format!(
                    "invalid value for key `{}`: `none` sends no secret, but one is configured",
                    key("client_auth_method")
                ));
            }
            (ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost, false) => {
                return Err(format!(
                    "invalid value for key `{}`: needs `client_secret` or `client_secret_path`",
                    key("client_auth_method")
                ));
            }
            _ => {}
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(format!("invalid value for key `{}`: must include `openid`", key("scopes")));
        }
        if let Some(scope) = self.scopes.iter().find(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(format!("invalid value for key `{}`: `{scope}` is not a scope", key("scopes")));
        }
        if self.user_mapping.localpart_template.is_empty() {
            return Err(format!(
                "invalid value for key `{}`: must not be empty",
                key("user_mapping.localpart_template")
            ));
        }
        for requirement in &self.attribute_requirements {
            if requirement.attribute.is_empty()
                || (requirement.value.is_none() && requirement.one_of.is_none())
            {
                return Err(format!(
                    "invalid value for key `{}`: each needs `attribute` and `value` or `one_of`",
                    key("attribute_requirements")
                ));
            }
        }
        Ok(())
    }
}

/// A provider URL: `https://`, or `http://` on a loopback host (a provider on the same
/// machine, or a test's), without a fragment.
fn check_provider_url(key: &str, text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("invalid value for key `{key}`: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!(
            "invalid value for key `{key}`: must be an https:// URL (http:// only on loopback)"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("invalid value for key `{key}`: must not have a fragment"));
    }
    Ok(())
}

impl Config {
    /// Checks of the single sign-on settings.
    pub(super) fn check_sso(&self) -> Result<(), String> {
        let mut ids = HashSet::new();
        for provider in &self.identity_providers {
            provider.check()?;
            if !ids.insert(provider.id.as_str()) {
                return Err(format!(
                    "invalid value for key `identity_providers`: the ID `{}` is used twice",
                    provider.id
                ));
            }
        }
        if self.sso_only && self.identity_providers.is_empty() {
            return Err("invalid value for key `sso_only`: needs at least one of `identity_providers`".into());
        }
        let timeout = self.login_via_existing_session.token_timeout.as_millis();
        if !(1_000..=3_600_000).contains(&timeout) {
            return Err(
                "invalid value for key `login_via_existing_session.token_timeout`: must be 1s to 1h".into()
            );
        }
        if let Some(bad) = self.sso.client_whitelist.iter().find(|p| url::Url::parse(p).is_err()) {
            return Err(format!("invalid value for key `sso.client_whitelist`: `{bad}` is not a URL"));
        }
        let lifetime = self.oauth.browser_session_lifetime.as_millis();
        if !(60_000..=30 * 86_400_000).contains(&lifetime) {
            return Err("invalid value for key `oauth.browser_session_lifetime`: must be 1m to 30d".into());
        }
        Ok(())
    }

    /// Whether any identity provider is configured.
    pub fn sso_enabled(&self) -> bool {
        !self.identity_providers.is_empty()
    }

    /// The base URL browsers reach this server at, without a trailing slash: `well_known.client`,
    /// else `https://<server_name>`. The providers send users back to
    /// `<base>/_synapse/client/oidc/callback`.
    pub fn public_base_url(&self) -> String {
        let base = self.well_known.client.clone().unwrap_or_else(|| format!("https://{}", self.server_name));
        base.trim_end_matches('/').to_owned()
    }
}

/// A template over a provider's claims: text with `{{ user.<claim>[.<field>…] [| filter]… }}`
/// expressions. Filters: `lower`, `upper`, `trim`, `localpart_from_email` (the part before
/// `@`). A claim that is missing or null renders as nothing (as Synapse's Jinja templates
/// do); a claim that is a list or an object is an error.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Claim { path: Vec<String>, filters: Vec<Filter> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    Lower,
    Upper,
    Trim,
    LocalpartFromEmail,
}

impl ClaimTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("`{source}`: `{{{{` without `}}}}`"))?;
            parts.push(parse_expression(&after[..end]).map_err(|e| format!("`{source}`: {e}"))?);
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("`{source}`: `}}}}` without `{{{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { source: source.to_owned(), parts })
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The text for these claims.
    pub fn render(&self, claims: &serde_json::Map<String, JsonValue>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Claim { path, filters } => {
                    let mut value = claims.get(&path[0]);
                    for field in &path[1..] {
                        value = value.and_then(|v| v.get(field));
                    }
                    let mut text = match value {
                        None | Some(JsonValue::Null) => String::new(),
                        Some(JsonValue::String(s)) => s.clone(),
                        Some(JsonValue::Bool(b)) => b.to_string(),
                        Some(JsonValue::Number(n)) => n.to_string(),
                        Some(_) => return Err(format!("the claim `{}` is not text", path.join("."))),
                    };
                    for filter in filters {
                        text = match filter {
                            Filter::Lower => text.to_lowercase(),
                            Filter::Upper => text.to_uppercase(),
                            Filter::Trim => text.trim().to_owned(),
                            Filter::LocalpartFromEmail => {
                                text.rsplit_once('@').map_or(text.clone(), |(local, _)| local.to_owned())
                            }
                        };
                    }
                    out.push_str(&text);
                }
            }
        }
        Ok(out)
    }
}

fn parse_expression(expression: &str) -> Result<Part, String> {
    let mut pieces = expression.split('|').map(str::trim);
    let reference = pieces.next().unwrap_or_default();
    let path: Vec<String> = match reference.strip_prefix("user.") {
        Some(path) => path.split('.').map(str::to_owned).collect(),
        None => return Err(format!("`{reference}` is not `user.<claim>`")),
    };
    if path
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ':')))
    {
        return Err(format!("`{reference}` is not `user.<claim>`"));
    }
    let filters = pieces
        .map(|name| match name {
            "lower" => Ok(Filter::Lower),
            "upper" => Ok(Filter::Upper),
            "trim" => Ok(Filter::Trim),
            "localpart_from_email" => Ok(Filter::LocalpartFromEmail),
            other => Err(format!("unknown filter `{other}` (lower, upper, trim, localpart_from_email)")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Part::Claim { path, filters })
}

impl fmt::Debug for ClaimTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimTemplate({:?})", self.source)
    }
}

impl Serialize for ClaimTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for ClaimTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        ClaimTemplate::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: JsonValue) -> serde_json::Map<String, JsonValue> {
        match value {
            JsonValue::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn templates_render_claims_with_filters() {
        let c = claims(json!({
            "preferred_username": "Alice.Smith",
            "email": "Alice@Example.COM",
            "address": {"locality": "Berlin"},
            "groups": ["a"],
            "age": 42,
        }));
        for (template, expected) in [
            ("{{ user.preferred_username }}", "Alice.Smith"),
            ("{{user.preferred_username|lower}}", "alice.smith"),
            ("{{ user.email | localpart_from_email | lower }}", "alice"),
            ("x-{{ user.address.locality | upper }}-{{ user.age }}", "x-BERLIN-42"),
            ("{{ user.missing }}", ""),
            ("plain", "plain"),
        ] {
            assert_eq!(ClaimTemplate::parse(template).unwrap().render(&c).unwrap(), expected, "{template}");
        }
        assert!(ClaimTemplate::parse("{{ user.groups }}").unwrap().render(&c).is_err());
        for bad in ["{{ user.name", "{{ name }}", "{{ user.name | shout }}", "a }} b", "{{ user. }}"] {
            assert!(ClaimTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attribute_requirements_match_values_and_lists() {
        let c = claims(json!({"groups": ["staff", "chat-users"], "dept": "it"}));
        let req = |attribute: &str, value: Option<&str>, one_of: Option<Vec<&str>>| AttributeRequirement {
            attribute: attribute.to_owned(),
            value: value.map(str::to_owned),
            one_of: one_of.map(|v| v.into_iter().map(str::to_owned).collect()),
        };
        assert!(req("groups", Some("chat-users"), None).holds(&c));
        assert!(!req("groups", Some("admins"), None).holds(&c));
        assert!(req("dept", None, Some(vec!["hr", "it"])).holds(&c));
        assert!(!req("dept", Some("hr"), None).holds(&c));
        assert!(!req("missing", Some("x"), None).holds(&c));
    }

    fn provider_toml(extra: &str) -> String {
        format!(
            "[global]\n[[global.identity_providers]]\nid = \"corp\"\nissuer = \"https://id.example.com/realms/corp\"\n\
             client_id = \"conduit\"\nclient_secret = \"s\"\n{extra}"
        )
    }

    #[test]
    fn identity_providers_load_and_are_checked() {
        let loaded = Config::from_toml_str(&provider_toml(
            "scopes = [\"openid\", \"profile\", \"groups\"]\n[global.identity_providers.user_mapping]\n\
             localpart_template = \"{{ user.email | localpart_from_email }}\"\n\
             [[global.identity_providers.attribute_requirements]]\nattribute = \"groups\"\nvalue = \"chat-users\"\n",
        ))
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let provider = &loaded.config.identity_providers[0];
        assert_eq!(provider.auth_method(), ClientAuthMethod::ClientSecretBasic);
        assert_eq!(provider.display_name(), "corp");
        assert!(provider.enable_registration && !provider.allow_existing_users);
        for (extra, key) in [
            ("scopes = [\"profile\"]", "scopes"),
            ("client_auth_method = \"none\"", "client_auth_method"),
            ("client_secret_path = \"/x\"", "client_secret_path"),
            ("discover = false", "authorization_endpoint"),
            ("jwks_uri = \"http://id.example.com/jwks\"", "jwks_uri"),
            (
                "[global.identity_providers.user_mapping]\nlocalpart_template = \"{{ user.x | nope }}\"",
                "nope",
            ),
            ("idp_nmae = \"typo\"", "idp_nmae"),
        ] {
            let err = Config::from_toml_str(&provider_toml(extra)).err().unwrap_or_default();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let twice = format!(
            "{}\n[[global.identity_providers]]\nid = \"corp\"\nissuer = \"https://b.example\"\nclient_id = \"c\"",
            provider_toml("")
        );
        assert!(Config::from_toml_str(&twice).err().unwrap().contains("used twice"));
        let bad_id = provider_toml("").replace("id = \"corp\"", "id = \"a/b\"");
        assert!(Config::from_toml_str(&bad_id).err().unwrap().contains("identity_providers.id"));
        // A loopback provider may speak plain HTTP.
        let local = provider_toml("").replace("https://id.example.com/realms/corp", "http://127.0.0.1:8080/");
        assert!(Config::from_toml_str(&local).is_ok());
        assert!(Config::from_toml_str("[global]\nsso_only = true").err().unwrap().contains("sso_only"));
    }
}
