//! Application service registrations (spec: Application Service API, "Registration"): what a
//! registration file says, checked field by field, and the namespace rules that follow from
//! it. A registration is YAML as Synapse reads it (`app_service_config_files`); the checks name
//! the field that is wrong. Namespace regexes match from the start of the ID, as Synapse's
//! `re.match` does; they are Rust regexes, which run in time linear in the input, so no
//! pattern can backtrack catastrophically, and a pattern too large to compile within a
//! bounded size is refused.

use std::fmt;

use regex::{Regex, RegexBuilder};
use ruma::{OwnedUserId, RoomAliasId, RoomId, ServerName, UserId};
use serde::Deserialize;

use super::user_id::registrable_user_id;

/// The most a namespace regex may compile to (bytes of its program): far above any
/// namespace a bridge registers, far below what could hurt the server.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The largest registration file read.
pub const MAX_REGISTRATION_BYTES: usize = 1 << 20;

/// A registration as written in its file, before any check.
#[derive(Debug, Deserialize)]
struct RegistrationFile {
    id: Option<String>,
    /// Absent or null: the appservice receives nothing (it only acts through its token).
    #[serde(default)]
    url: Option<String>,
    as_token: Option<String>,
    hs_token: Option<String>,
    sender_localpart: Option<String>,
    namespaces: Option<NamespacesFile>,
    #[serde(default)]
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    #[serde(default)]
    receive_ephemeral: Option<bool>,
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral_msc2409: Option<bool>,
    #[serde(default, rename = "org.matrix.msc3202")]
    msc3202: Option<bool>,
    #[serde(default, rename = "io.element.msc4190")]
    msc4190: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct NamespacesFile {
    #[serde(default)]
    users: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    aliases: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    rooms: Option<Vec<NamespaceFile>>,
}

#[derive(Debug, Deserialize)]
struct NamespaceFile {
    #[serde(default)]
    exclusive: Option<bool>,
    regex: Option<String>,
}

/// One namespace: IDs matching `regex`, claimed for the appservice alone when `exclusive`.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub exclusive: bool,
    /// The pattern as written in the file.
    pub pattern: String,
    regex: Regex,
}

impl Namespace {
    pub fn matches(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

/// Which namespace list a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    Users,
    Aliases,
    Rooms,
}

/// A checked registration.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: String,
    /// Where transactions and queries go; `None` for an appservice that only sends.
    pub url: Option<url::Url>,
    pub as_token: String,
    pub hs_token: String,
    /// The appservice's own user (`sender_localpart` on this server).
    pub sender: OwnedUserId,
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
    /// Whether its requests are rate limited (Synapse's default: yes).
    pub rate_limited: bool,
    pub protocols: Vec<String>,
    /// Typing notices, receipts and presence in its transactions (MSC2409).
    pub receive_ephemeral: bool,
    /// MSC3202: to-device messages, device list changes and one-time key counts for its
    /// users in transactions, and `device_id` masquerading.
    pub msc3202: bool,
    /// MSC4190: the appservice manages its users' devices itself (`PUT /devices/{deviceId}`).
    pub msc4190: bool,
}

/// What is wrong with a registration, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationError {
    /// The field, as a path in the file (`namespaces.users[0].regex`), or empty for the file
    /// as a whole.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "`{}`: {}", self.field, self.problem)
        }
    }
}

fn wrong(field: impl Into<String>, problem: impl Into<String>) -> RegistrationError {
    RegistrationError { field: field.into(), problem: problem.into() }
}

fn required(field: &str, value: Option<String>) -> Result<String, RegistrationError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(wrong(field, "must not be empty")),
        None => Err(wrong(field, "is missing")),
    }
}

/// Read and check a registration from its text, for a server named `server`: YAML, as
/// registration files are written, or JSON (a text that starts with `{`, as the admin API
/// may be sent it).
pub fn parse_registration(text: &str, server: &ServerName) -> Result<Registration, RegistrationError> {
    if text.len() > MAX_REGISTRATION_BYTES {
        return Err(wrong("", format!("larger than {MAX_REGISTRATION_BYTES} bytes")));
    }
    let file: RegistrationFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| wrong("", format!("not a registration in JSON: {e}")))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| wrong("", format!("not a registration in YAML: {e}")))?
    };
    check(file, server)
}

fn check(file: RegistrationFile, server: &ServerName) -> Result<Registration, RegistrationError> {
    let id = required("id", file.id)?;
    let as_token = required("as_token", file.as_token)?;
    let hs_token = required("hs_token", file.hs_token)?;
    if as_token == hs_token {
        return Err(wrong("hs_token", "must differ from as_token"));
    }
    let localpart = required("sender_localpart", file.sender_localpart)?;
    let sender = registrable_user_id(&localpart, server)
        .map_err(|e| wrong("sender_localpart", format!("not a valid user localpart: {e}")))?;
    let url = match file.url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => {
            let url = url::Url::parse(text).map_err(|e| wrong("url", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(wrong("url", "must be an http or https URL with a host"));
            }
            Some(url)
        }
    };
    let namespaces = file.namespaces.ok_or_else(|| wrong("namespaces", "is missing"))?;
    let users = namespace_list("namespaces.users", namespaces.users)?;
    let aliases = namespace_list("namespaces.aliases", namespaces.aliases)?;
    let rooms = namespace_list("namespaces.rooms", namespaces.rooms)?;
    Ok(Registration {
        id,
        url,
        as_token,
        hs_token,
        sender,
        users,
        aliases,
        rooms,
        rate_limited: file.rate_limited.unwrap_or(true),
        protocols: file.protocols.unwrap_or_default(),
        receive_ephemeral: file.receive_ephemeral.or(file.push_ephemeral_msc2409).unwrap_or(false),
        msc3202: file.msc3202.unwrap_or(false),
        msc4190: file.msc4190.unwrap_or(false),
    })
}

fn namespace_list(
    field: &str,
    list: Option<Vec<NamespaceFile>>,
) -> Result<Vec<Namespace>, RegistrationError> {
    list.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, ns)| {
            let field = format!("{field}[{i}]");
            let pattern = required(&format!("{field}.regex"), ns.regex)?;
            let regex = RegexBuilder::new(&format!("^(?:{pattern})"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| wrong(format!("{field}.regex"), format!("not a usable regex: {e}")))?;
            Ok(Namespace { exclusive: ns.exclusive.unwrap_or(false), pattern, regex })
        })
        .collect()
}

impl Registration {
    fn list(&self, kind: NamespaceKind) -> &[Namespace] {
        match kind {
            NamespaceKind::Users => &self.users,
            NamespaceKind::Aliases => &self.aliases,
            NamespaceKind::Rooms => &self.rooms,
        }
    }

    /// Whether `id` is in one of its namespaces of `kind`.
    pub fn claims(&self, kind: NamespaceKind, id: &str) -> bool {
        self.list(kind).iter().any(|ns| ns.matches(id))
    }

    /// Whether `id` is in one of its exclusive namespaces of `kind`.
    pub fn claims_exclusively(&self, kind: NamespaceKind, id: &str) -> bool {
        self.list(kind).iter().any(|ns| ns.exclusive && ns.matches(id))
    }

    /// Whether it may act as `user_id`: its sender, or a user in its namespaces.
    pub fn may_act_as(&self, user_id: &UserId) -> bool {
        user_id == self.sender || self.claims(NamespaceKind::Users, user_id.as_str())
    }

    pub fn claims_alias(&self, alias: &RoomAliasId) -> bool {
        self.claims(NamespaceKind::Aliases, alias.as_str())
    }

    pub fn claims_room(&self, room_id: &RoomId) -> bool {
        self.claims(NamespaceKind::Rooms, room_id.as_str())
    }
}

/// The instance ID a client names one appservice network by (in `/thirdparty/protocols` and
/// `third_party_instance_id`): `{appservice_id}|{network_id}`, as Synapse builds it.
pub fn instance_id(appservice_id: &str, network_id: &str) -> String {
    format!("{appservice_id}|{network_id}")
}

/// The appservice ID and network ID an instance ID names: exactly one `|` between them, as
/// Synapse splits it.
pub fn parse_instance_id(instance_id: &str) -> Option<(&str, &str)> {
    let (appservice_id, network_id) = instance_id.split_once('|')?;
    (!network_id.contains('|')).then_some((appservice_id, network_id))
}

/// Why a set of registrations cannot be served together.
pub fn conflicts(registrations: &[&Registration]) -> Option<String> {
    for (i, a) in registrations.iter().enumerate() {
        for b in &registrations[i + 1..] {
            if a.id == b.id {
                return Some(format!("two registrations have the id `{}`", a.id));
            }
            if a.as_token == b.as_token || a.as_token == b.hs_token || a.hs_token == b.as_token {
                return Some(format!("`{}` and `{}` share a token", a.id, b.id));
            }
            if a.sender == b.sender {
                return Some(format!("`{}` and `{}` have the same sender {}", a.id, b.id, a.sender));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> &'static ServerName {
        <&ServerName>::try_from("example.org").unwrap()
    }

    const GOOD: &str = r#"
id: bridge
url: "http://127.0.0.1:29300"
as_token: "as-secret"
hs_token: "hs-secret"
sender_localpart: bridgebot
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: '@bridge_.*:example\.org'
  aliases:
    - exclusive: false
      regex: '#bridge_.*:example\.org'
  rooms: []
"#;

    #[test]
    fn a_bridge_registration_reads_with_its_namespaces() {
        let reg = parse_registration(GOOD, server()).unwrap();
        assert_eq!(reg.id, "bridge");
        assert_eq!(reg.sender.as_str(), "@bridgebot:example.org");
        assert!(!reg.rate_limited);
        assert!(reg.receive_ephemeral);
        let alice = <&UserId>::try_from("@bridge_alice:example.org").unwrap();
        let bob = <&UserId>::try_from("@bob:example.org").unwrap();
        assert!(reg.may_act_as(alice) && reg.may_act_as(&reg.sender) && !reg.may_act_as(bob));
        assert!(reg.claims_exclusively(NamespaceKind::Users, alice.as_str()));
        assert!(reg.claims(NamespaceKind::Aliases, "#bridge_x:example.org"));
        assert!(!reg.claims_exclusively(NamespaceKind::Aliases, "#bridge_x:example.org"));
        // Anchored at the start, as Synapse's re.match: a suffix does not match.
        assert!(!reg.claims(NamespaceKind::Users, "@x@bridge_a:example.org"));
    }

    #[test]
    fn each_wrong_field_is_named() {
        let cases = [
            (GOOD.replace("id: bridge\n", ""), "id"),
            (GOOD.replace("as_token: \"as-secret\"\n", ""), "as_token"),
            (GOOD.replace("hs-secret", "as-secret"), "hs_token"),
            (GOOD.replace("bridgebot", "Bridge Bot"), "sender_localpart"),
            (GOOD.replace("http://127.0.0.1:29300", "ftp://x"), "url"),
            (GOOD.replace(r"'@bridge_.*:example\.org'", "'@bridge_(.*'"), "namespaces.users[0].regex"),
            (GOOD.replace(r"'@bridge_.*:example\.org'", r"'(a)\1'"), "namespaces.users[0].regex"),
        ];
        for (text, field) in cases {
            let error = parse_registration(&text, server()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
        assert!(parse_registration("- just\n- a list\n", server()).unwrap_err().field.is_empty());
    }

    #[test]
    fn json_reads_as_yaml_does() {
        let json = r#"{"id": "bridge", "url": null, "as_token": "a", "hs_token": "h",
            "sender_localpart": "bridgebot", "protocols": ["irc"],
            "namespaces": {"users": [{"exclusive": true, "regex": "@irc_.*"}]}}"#;
        let reg = parse_registration(json, server()).unwrap();
        assert_eq!((reg.id.as_str(), reg.protocols.as_slice()), ("bridge", &["irc".to_owned()][..]));
        assert!(reg.url.is_none() && reg.claims(NamespaceKind::Users, "@irc_x:example.org"));
        let missing = json.replace(r#""as_token": "a", "#, "");
        assert_eq!(parse_registration(&missing, server()).unwrap_err().field, "as_token");
        assert!(parse_registration("{not json", server()).unwrap_err().problem.contains("JSON"));
    }

    #[test]
    fn a_pattern_that_backtracks_elsewhere_runs_in_linear_time_here() {
        let text = GOOD.replace(r"'@bridge_.*:example\.org'", "'(a+)+$'");
        let reg = parse_registration(&text, server()).unwrap();
        let long = format!("{}!", "a".repeat(100_000));
        assert!(!reg.claims(NamespaceKind::Users, &long));
        let huge = GOOD.replace(r"'@bridge_.*:example\.org'", "'(\\w{1000}){1000}'");
        assert_eq!(parse_registration(&huge, server()).unwrap_err().field, "namespaces.users[0].regex");
    }

    #[test]
    fn instance_ids_join_and_split_as_synapse_s() {
        assert_eq!(instance_id("irc", "libera"), "irc|libera");
        assert_eq!(parse_instance_id("irc|libera"), Some(("irc", "libera")));
        assert_eq!(parse_instance_id("irc|"), Some(("irc", "")));
        for bad in ["irc", "a|b|c", ""] {
            assert_eq!(parse_instance_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn shared_ids_tokens_or_senders_conflict() {
        let a = parse_registration(GOOD, server()).unwrap();
        let mut b = a.clone();
        assert!(conflicts(&[&a, &b]).unwrap().contains("id"));
        b.id = "other".into();
        assert!(conflicts(&[&a, &b]).unwrap().contains("token"));
        b.as_token = "x".into();
        b.hs_token = "y".into();
        assert!(conflicts(&[&a, &b]).unwrap().contains("sender"));
        b.sender = "@other:example.org".try_into().unwrap();
        assert_eq!(conflicts(&[&a, &b]), None);
    }
}
