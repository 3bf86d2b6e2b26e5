//! The one configuration: every key, its default and its check. The only code that reads the
//! environment. Keys live under `[global]` in `conduit.toml`; each can be overridden by
//! `CONDUIT_<KEY>` (nested tables joined with `__`).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

mod sso;

pub use self::sso::{
    AttributeRequirement, ClaimTemplate, ClientAuthMethod, IdentityProviderConfig,
    LoginViaExistingSessionConfig, OAuthConfig, PkceMethod, SsoConfig, UserMappingConfig, UserProfileMethod,
};
pub use crate::matrix::rate_limit::Rate;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ipnet::IpNet;
use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

/// Server configuration. Field docs are the reference; `conduit.toml.example` and
/// `docs/configuration.md` repeat them for operators.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// The server's Matrix name: the part after `:` in user IDs. Cannot change later.
    pub server_name: OwnedServerName,
    /// Address to listen on (the one listener serving `client` and `federation` when no
    /// `[[global.listeners]]` are configured).
    pub address: IpAddr,
    /// Port to listen on (as `address`).
    pub port: u16,
    /// The listeners, each with its address, port, what it serves and optional TLS. Empty
    /// (the default): one listener on `address`:`port` serving `client` and `federation`,
    /// without TLS. Sockets passed by systemd socket activation are served as
    /// `client` and `federation` listeners in addition to these.
    pub listeners: Vec<ListenerConfig>,
    /// Most connections open at once over all listeners that serve `client` or
    /// `federation` (listeners serving only `metrics` are not counted, so monitoring still
    /// sees an overloaded server); a connection past it is closed as soon as it is accepted.
    pub max_connections: u32,
    /// How long a client may take to send a request's head (request line and headers); an
    /// idle keep-alive connection is closed after this long too. A connection that takes
    /// longer is closed.
    pub request_header_timeout: ConfigDuration,
    /// How long a request body may stall: a body that sends nothing for this long is
    /// abandoned (`408`, and the connection closed). A slow but moving upload is not cut off.
    pub request_body_timeout: ConfigDuration,
    /// How long a connection may stay open with no request in flight and nothing sent or
    /// received. Never applies while a request is being answered, so long-polls (`/sync`,
    /// sliding sync, `/events`) are not cut off.
    pub keep_alive_timeout: ConfigDuration,
    /// Directory of the RocksDB database (`database_backend = "rocksdb"`); with PostgreSQL,
    /// the directory of the control socket (and of media, unless `media_path` is set).
    pub database_path: PathBuf,
    /// Which storage engine holds the database: `rocksdb` (embedded, the default) or
    /// `postgresql` (at `database_url`).
    pub database_backend: DatabaseBackend,
    /// The PostgreSQL database (`postgresql://user:password@host:5432/conduit`), for
    /// `database_backend = "postgresql"`.
    pub database_url: Option<String>,
    /// Connections to PostgreSQL in all (half for transactions, half for the rest).
    pub database_pool_size: u32,
    /// PostgreSQL's `statement_timeout` for each statement, milliseconds; unset means
    /// PostgreSQL's own setting.
    pub database_statement_timeout_ms: Option<u64>,
    /// Whether several conduit processes share this PostgreSQL database (behind a load
    /// balancer). Off: the process holds the database alone and a second one is refused at
    /// start-up. On: every process sharing the database must set it; stream positions and
    /// cache invalidations are coordinated through the database.
    pub multi_process: bool,
    /// Largest accepted request body, in bytes.
    pub max_request_size: u32,
    /// To-device messages one device may have waiting; past it new ones are dropped.
    pub to_device_queue_max_messages: u64,
    /// Bytes of to-device content one device may have waiting; past it new ones are dropped.
    pub to_device_queue_max_bytes: u64,
    /// Whether anyone may register an account through the API.
    pub allow_registration: bool,
    /// When set (and registration is allowed), registering requires this token.
    pub registration_token: Option<String>,
    /// Whether registering requires a registration token: the configured one or one an
    /// admin made through the admin API (Synapse's key). Setting `registration_token`
    /// implies it.
    pub registration_requires_token: bool,
    /// Application service registration files (YAML, Synapse's format), read at start-up and
    /// on reload (SIGHUP).
    pub app_service_config_files: Vec<std::path::PathBuf>,
    /// Whether to talk to other Matrix servers. What federates so far: server keys (our
    /// key server, fetching others' keys, the notary key query), signed requests both ways,
    /// profile and room-alias queries, rooms (joins, invites, leaves, backfill), end-to-end
    /// encryption, media and the public room directory (see `docs/features.md`). Off by
    /// default: no federation route is served and no connection to another server is ever
    /// made.
    pub allow_federation: bool,
    /// Whether other servers may list this server's public room directory
    /// (`/_matrix/federation/v1/publicRooms`). Off by default, as in Synapse: rooms published
    /// for this server's users are not advertised to the whole federation unless asked.
    pub allow_public_rooms_over_federation: bool,
    /// Notary servers asked for another server's keys when that server cannot be reached
    /// directly (e.g. `["matrix.org"]`). Empty by default: keys come only from their servers.
    pub trusted_servers: Vec<OwnedServerName>,
    /// A PEM file of extra CA certificates trusted for federation TLS (a private PKI), on top
    /// of the public roots.
    pub federation_ca_file: Option<PathBuf>,
    /// An HTTP proxy every federation request goes through (`http://[user:password@]host:port`,
    /// asked with `CONNECT` for a tunnel to the destination's address, which this server
    /// resolves and vets itself). Unset: federation connects directly.
    pub federation_proxy: Option<String>,
    /// When not empty, the only servers federated with: `example.com` matches that server
    /// name's host, `*.example.com` its subdomains.
    pub federation_domain_allowlist: Vec<String>,
    /// Servers never federated with (same patterns); requests from them are refused too.
    pub federation_domain_denylist: Vec<String>,
    /// How long one federation request may take (connecting, sending, the answer), seconds.
    pub federation_timeout_secs: u64,
    /// The longest wait between retries of a transaction to a server that is down, seconds
    /// (the wait starts at 1 s and doubles).
    pub federation_max_backoff_secs: u64,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax (e.g. `info`, `conduit=debug`).
    pub log: String,
    /// Answers for `/.well-known/matrix/{client,server}`.
    pub well_known: WellKnownConfig,
    /// Flat aliases for `well_known.client` / `well_known.server`.
    pub well_known_client: Option<String>,
    pub well_known_server: Option<String>,
    /// Lifetime of access tokens issued to clients that asked for a refresh token, seconds.
    pub refreshable_access_token_lifetime_secs: u64,
    /// How long a user-interactive authentication session stays valid, seconds.
    pub uiaa_session_lifetime_secs: u64,
    /// Room version of new rooms when the client names none (1 to 12; Synapse 1.163's
    /// default, 12, unless set).
    pub default_room_version: RoomVersionId,
    /// Whether users' presence (online, unavailable, offline) is tracked and shared.
    pub presence_enabled: bool,
    /// A user whose clients have neither synced nor set presence for this long goes offline.
    pub presence_offline_timeout_secs: u64,
    /// Memory the in-memory caches (state maps, events, room member lists) may hold
    /// together, MiB: half for state maps, a quarter each for events and member lists.
    pub cache_memory_mib: u64,
    /// Argon2id parameters for new password hashes (existing hashes keep their own).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Whether the user directory finds every local account. When false (the default), a
    /// user finds only users who share a room with them or are joined to a published, public
    /// or world-readable room.
    pub user_directory_search_all_local_users: bool,
    /// Directory of uploaded media files; unset means `media` inside `database_path`.
    pub media_path: Option<PathBuf>,
    /// Where media bytes are kept: `filesystem` (under `media_path`, the default) or `s3`
    /// (an S3-compatible bucket, `media_s3`; `media_path` then holds only uploads in progress
    /// and temporary copies for thumbnailing).
    pub media_backend: MediaBackend,
    /// The bucket for `media_backend = "s3"`.
    pub media_s3: MediaS3Config,
    /// Largest accepted upload, in bytes.
    pub max_upload_size: u64,
    /// The spec's v1.11 "freeze" of unauthenticated media: media uploaded while this is on is
    /// served only by the authenticated `/_matrix/client/v1/media/*` endpoints; the legacy
    /// `/_matrix/media/v3/{download,thumbnail}` answer 404 for it. Media uploaded while it was
    /// off stays available on both (Synapse's `enable_authenticated_media`).
    pub media_legacy_freeze: bool,
    /// Local media older than this many days is deleted by the periodic sweep; unset keeps
    /// media for ever.
    pub media_retention_days: Option<u32>,
    /// How many media IDs from `POST /media/v1/create` a user may hold without content.
    pub max_pending_media_uploads: u32,
    /// How long such an ID waits for its content, in seconds.
    pub media_unused_expiration_secs: u64,
    /// Images with more pixels than this are not thumbnailed (413 `M_TOO_LARGE`).
    pub max_image_pixels: u64,
    /// Whether `/preview_url` fetches pages. Off by default: the server then makes requests
    /// to any address users post.
    pub url_preview_enabled: bool,
    /// Address ranges previews may not reach, in addition to the built-in internal ranges.
    pub url_preview_ip_range_blacklist: Vec<IpNet>,
    /// Address ranges previews may reach even though they are internal or listed above.
    pub url_preview_ip_range_whitelist: Vec<IpNet>,
    /// Hosts never previewed: `example.com` matches that host, `*.example.com` its subdomains.
    pub url_preview_domain_blacklist: Vec<String>,
    /// When not empty, only hosts matching one of these patterns are previewed.
    pub url_preview_domain_whitelist: Vec<String>,
    /// Most bytes read from a previewed page or its image.
    pub url_preview_max_spider_size: u64,
    /// Time limit for fetching a preview (all redirects and the image included), seconds.
    pub url_preview_timeout_secs: u64,
    /// Address ranges refused to every outbound request the server makes to addresses
    /// users name (push gateways, other Matrix servers, IP-literal server names included), on top of the built-in ones
    /// (loopback, private, link-local, CGNAT, unique-local, multicast and the other
    /// special-purpose blocks, which are always refused). URL previews keep their own
    /// `url_preview_*` lists.
    pub ip_range_denylist: Vec<IpNet>,
    /// Ranges allowed anyway, built in or denied: an on-premises push gateway (Sygnal, ntfy)
    /// usually lives on the LAN, e.g. `["10.1.2.0/24"]`.
    pub ip_range_allowlist: Vec<IpNet>,
    /// Push gateways: how long one delivery may take (connecting, sending, the answer), in
    /// seconds.
    pub push_timeout_secs: u64,
    /// Push gateways: the longest wait between retries of a failing gateway, in seconds
    /// (waits start at 1 s and double). Notifications that have failed for 24 hours are
    /// given up, as in Synapse.
    pub push_backoff_max_secs: u64,
    /// The longest delay a client may give a delayed event (MSC4140, which Element Call
    /// needs), as a duration: `"24h"`, `"90s"`, `"500ms"`, `"7d"` (see [`ConfigDuration`]).
    /// Unset (the default) turns delayed events off: scheduling one is `403 M_FORBIDDEN`.
    pub max_event_delay_duration: Option<ConfigDuration>,
    /// How many delayed events one user may have waiting; scheduling another is
    /// `429 M_LIMIT_EXCEEDED`. 0 turns delayed events off, as in Synapse.
    pub max_delayed_events_per_user: u32,
    /// MatrixRTC (Element Call): the transports offered to clients.
    pub matrix_rtc: MatrixRtcConfig,
    /// TURN servers handed to clients for VoIP calls (`turn:`, `turns:`, `stun:` or `stuns:`
    /// URIs). Empty: `/voip/turnServer` answers `{}`.
    pub turn_uris: Vec<String>,
    /// The TURN server's shared secret (coturn's `static-auth-secret` with
    /// `use-auth-secret`): each user gets a username and password valid for `turn_ttl`.
    pub turn_secret: Option<String>,
    /// Fixed TURN credentials, for a TURN server without a shared secret; every user gets
    /// the same ones. Not together with `turn_secret`.
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    /// How long TURN credentials are valid, in seconds.
    pub turn_ttl: u64,
    /// Email notifications (`kind: "email"` pushers), sent through an SMTP server. Off
    /// unless `smtp.host` is set: then such pushers are refused.
    pub smtp: SmtpConfig,
    /// Password login against the company directory (see [`LdapConfig`]); off unless
    /// `ldap.uri` is set.
    pub ldap: LdapConfig,
    /// `org.matrix.login.jwt`: login with a JSON Web Token a company portal signed (see
    /// [`JwtConfig`]); off unless `jwt.enabled`.
    pub jwt: JwtConfig,
    /// Reverse proxies whose `X-Forwarded-For` is believed: for a request from one of these
    /// ranges, the client address (in logs, device last-seen records, rate limits and the
    /// audit log) is the nearest address in that header not itself in these ranges. Loopback
    /// by default, for a proxy on the same host; `[]` believes no header.
    pub trusted_proxies: Vec<IpNet>,
    /// The audit log: who did what, security-wise (see [`AuditConfig`]).
    pub audit: AuditConfig,
    /// Server notices: messages admins send to users through the admin API, from a system
    /// user into a room per user (Synapse's `server_notices`). Off unless
    /// `server_notices.system_mxid_localpart` is set.
    pub server_notices: ServerNoticesConfig,
    /// OpenID Connect providers users sign in with (single sign-on, `m.login.sso`); see
    /// [`IdentityProviderConfig`] and `docs/sso.md`.
    pub identity_providers: Vec<IdentityProviderConfig>,
    /// Turn password login off: users sign in only through the identity providers
    /// (`m.login.password` is no longer offered, and registering or changing a password
    /// through the API is refused). Application services still log in.
    pub sso_only: bool,
    /// Single sign-on settings shared by the providers (see [`SsoConfig`]).
    pub sso: SsoConfig,
    /// `POST /_matrix/client/v1/login/get_token` (see [`LoginViaExistingSessionConfig`]).
    pub login_via_existing_session: LoginViaExistingSessionConfig,
    /// The built-in OAuth 2.0 authorization server, for Element X (see [`OAuthConfig`] and
    /// `docs/sso.md`).
    pub oauth: OAuthConfig,
    /// Master switch of every rate limit below (`rc_*`). On by default.
    pub rate_limiting: bool,
    /// Whether server admins (and so the bots an admin account runs) are exempt from every
    /// rate limit. On by default; Synapse exempts no one by the admin flag alone (its
    /// `override_ratelimit` admin endpoint exempts single users, and works here too).
    pub rate_limit_exempt_admins: bool,
    /// Rate limits, Synapse's `rc_*` keys with Synapse's defaults: each a leaky bucket of
    /// `burst_count` actions that drains at `per_second` (see `docs/operations.md`, "Rate limits").
    /// Messages and other room events a user sends (and delayed events scheduled), per user.
    pub rc_message: Rate,
    /// Registrations, per client address.
    pub rc_registration: Rate,
    /// Registration-token validity checks, per client address.
    pub rc_registration_token_validity: Rate,
    /// Logins: per client address, per account logged into, and failed attempts per account.
    pub rc_login: LoginRates,
    /// Redactions of other users' events (by room admins and moderators); unset means the
    /// values of `rc_message`, counted apart from messages.
    pub rc_admin_redaction: Option<Rate>,
    /// Joins per user: to rooms this server is in (`local`), and to rooms it is not
    /// (`remote`, which needs federation; kept so configurations carry over).
    pub rc_joins: JoinRates,
    /// Joins per room, of all users together.
    pub rc_joins_per_room: Rate,
    /// Invites: per room, per invited user, per inviting user.
    pub rc_invites: InviteRates,
    /// Third-party identifier validation, per user or address (this server supports no
    /// third-party identifiers yet, so nothing is counted).
    pub rc_3pid_validation: Rate,
    /// `POST /_matrix/media/v1/create`, per user.
    pub rc_media_create: Rate,
    /// Presence updates per user: `PUT /presence` past it is refused; presence set by
    /// `/sync`'s `set_presence` past it is ignored.
    pub rc_presence: PresenceRates,
    /// Delayed-event management (MSC4140: list, cancel, restart, send), per user, or per
    /// address for the unauthenticated endpoints.
    pub rc_delayed_event_mgmt: Rate,
    /// Reports of events, rooms and users, per user.
    pub rc_reports: Rate,
    /// `createRoom`, per user.
    pub rc_room_creation: Rate,
    /// User directory searches, per user.
    pub rc_user_directory: Rate,
    /// `m.room_key_request` to-device messages to other users, per sending device; past it
    /// they are dropped (as Synapse drops them).
    pub rc_key_requests: Rate,
}

/// Who sends server notices, and what their rooms are called.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerNoticesConfig {
    /// The localpart of the system user notices come from, e.g. `notices`; unset (the
    /// default): notices are off and `send_server_notice` answers 400.
    pub system_mxid_localpart: Option<String>,
    /// The system user's display name.
    pub system_mxid_display_name: Option<String>,
    /// The system user's avatar, an `mxc://` URI.
    pub system_mxid_avatar_url: Option<String>,
    /// The name of each user's notices room.
    pub room_name: String,
}

impl Default for ServerNoticesConfig {
    fn default() -> Self {
        Self {
            system_mxid_localpart: None,
            system_mxid_display_name: None,
            system_mxid_avatar_url: None,
            // Synapse's default.
            room_name: "Server Notices".to_owned(),
        }
    }
}

/// `[global.audit]`: the audit log is always kept in the database (admins read it at
/// `GET /_conduit/admin/v1/audit_log`); these settings copy it elsewhere and bound it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuditConfig {
    /// Append each record, as one JSON line, to this file too (created if missing).
    pub file: Option<PathBuf>,
    /// Send each record, as one JSON line, to the local syslog (`/dev/log`, facility
    /// `authpriv`) too; journald reads it there.
    pub syslog: bool,
    /// Delete records older than this many days (checked daily); unset keeps them forever.
    pub retention_days: Option<u32>,
}

/// One `[[global.listeners]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `"0.0.0.0"`, `"::"` or `"127.0.0.1"`.
    pub address: IpAddr,
    /// Port to bind (0: the system picks one).
    pub port: u16,
    /// What it serves: `client` (the client-server API, media, the admin API and
    /// `/.well-known/matrix/client`), `federation` (`/_matrix/federation`, `/_matrix/key`,
    /// `/.well-known/matrix/server`), `openid` (only `/_matrix/federation/v1/openid/userinfo`,
    /// which call services use; `federation` includes it), `media` (only the media
    /// endpoints, `/_matrix/media/*` and `/_matrix/client/v1/media/*`; `client` includes
    /// them), `metrics` (`/metrics`). Other requests answer `404 M_UNRECOGNIZED`.
    pub resources: Vec<ListenerResource>,
    /// PEM certificate chain (leaf first) for TLS on this listener; with
    /// `tls_private_key_path`. Both unset: plain HTTP. Also read as `tls_certs`.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "tls_certs")]
    pub tls_certificate_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate. Also read as `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "tls_key")]
    pub tls_private_key_path: Option<PathBuf>,
}

/// The storage engine (`database_backend`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseBackend {
    /// RocksDB in `database_path`.
    #[default]
    Rocksdb,
    /// PostgreSQL at `database_url`.
    Postgresql,
}

/// Where media bytes are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaBackend {
    /// Files under `media_path`.
    #[default]
    Filesystem,
    /// Objects in an S3-compatible bucket (`[global.media_s3]`).
    S3,
}

/// An S3-compatible bucket for media (`media_backend = "s3"`): AWS S3, MinIO, Ceph's RADOS
/// Gateway, Garage and the like. The endpoint is the operator's, so it may be on loopback or
/// a private network: `ip_range_denylist` does not apply to it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct MediaS3Config {
    /// The service's URL, `http://` or `https://`, e.g. `https://s3.eu-west-1.amazonaws.com`
    /// or `http://127.0.0.1:9000`; no path.
    pub endpoint: Option<String>,
    /// The bucket's name. It must exist: the server checks it at start.
    pub bucket: Option<String>,
    /// The region requests are signed for (self-hosted services mostly accept any).
    pub region: String,
    /// The credentials requests are signed with (AWS Signature Version 4).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `true` (the default, what self-hosted services expect): the bucket is the first part of
    /// the path (`http://host/bucket/key`); `false`: the bucket is part of the host name
    /// (`https://bucket.host/key`).
    pub path_style: bool,
    /// Put before every object's key, e.g. `"conduit/"`, to share a bucket.
    pub prefix: String,
}

impl Default for MediaS3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
            prefix: String::new(),
        }
    }
}

/// The largest object one S3 `PUT` may carry (5 GiB); uploads are sent in one `PUT`.
pub const S3_MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

impl MediaS3Config {
    /// Every key `media_backend = "s3"` needs is there and well formed.
    fn check(&self, max_upload_size: u64) -> Result<(), String> {
        let missing = |key: &str| {
            format!(
                "media_backend = \"s3\" needs key `media_s3.{key}` (or CONDUIT_MEDIA_S3__{})",
                key.to_uppercase()
            )
        };
        let endpoint =
            self.endpoint.as_deref().filter(|e| !e.is_empty()).ok_or_else(|| missing("endpoint"))?;
        let url = url::Url::parse(endpoint).map_err(|e| {
            format!("invalid value for key `media_s3.endpoint`: `{endpoint}` is not a URL: {e}")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "invalid value for key `media_s3.endpoint`: `{endpoint}` is not an http(s) URL"
            ));
        }
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(format!(
                "invalid value for key `media_s3.endpoint`: `{endpoint}` must name only the scheme, host and port"
            ));
        }
        let bucket = self.bucket.as_deref().filter(|b| !b.is_empty()).ok_or_else(|| missing("bucket"))?;
        // S3's naming rules, which also make the name safe in a path and a host name.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.as_bytes()[0].is_ascii_alphanumeric();
        if !valid_bucket {
            return Err(format!(
                "invalid value for key `media_s3.bucket`: `{bucket}` is not an S3 bucket name (3 to 63 \
                 lowercase letters, digits, `-` and `.`)"
            ));
        }
        if self.region.is_empty() {
            return Err("invalid value for key `media_s3.region`: must not be empty".into());
        }
        self.access_key_id.as_deref().filter(|k| !k.is_empty()).ok_or_else(|| missing("access_key_id"))?;
        self.secret_access_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| missing("secret_access_key"))?;
        if self.prefix.starts_with('/') {
            return Err("invalid value for key `media_s3.prefix`: must not start with `/`".into());
        }
        if max_upload_size > S3_MAX_OBJECT_SIZE {
            return Err(format!(
                "invalid value for key `max_upload_size`: with media_backend = \"s3\" at most \
                 {S3_MAX_OBJECT_SIZE} (5 GiB, the largest single S3 PUT)"
            ));
        }
        Ok(())
    }
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ListenerResource {
    Client,
    Federation,
    Openid,
    Media,
    Metrics,
}

impl ListenerConfig {
    /// A plain-HTTP listener on `address:port` serving `resources`.
    pub fn plain(address: IpAddr, port: u16, resources: &[ListenerResource]) -> Self {
        Self {
            address,
            port,
            resources: resources.to_vec(),
            tls_certificate_path: None,
            tls_private_key_path: None,
        }
    }

    pub fn serves(&self, resource: ListenerResource) -> bool {
        self.resources.contains(&resource)
    }
}

/// `rc_login`'s three limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LoginRates {
    pub address: Rate,
    pub account: Rate,
    pub failed_attempts: Rate,
}

/// `rc_joins`' two limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JoinRates {
    pub local: Rate,
    pub remote: Rate,
}

/// `rc_invites`' three limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InviteRates {
    pub per_room: Rate,
    pub per_user: Rate,
    pub per_issuer: Rate,
}

/// `rc_presence`'s limit.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PresenceRates {
    pub per_user: Rate,
}

/// The SMTP server email notifications go through, and what the emails say (Synapse's
/// `email` section, in this server's spelling).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct SmtpConfig {
    /// The SMTP server's host name. Unset (the default): no emails are sent.
    pub host: Option<String>,
    /// Its port; unset means the usual one for `tls`: 25, 587 or 465.
    pub port: Option<u16>,
    /// `none` (plain text, for a relay on the same machine), `starttls` (upgrade before
    /// anything is sent; refused if the server cannot) or `tls` (TLS from the start).
    pub tls: SmtpTls,
    /// Credentials, when the SMTP server wants them (both or neither).
    pub user: Option<String>,
    pub password: Option<String>,
    /// The sender of notification emails, e.g. `"Example Chat <noreply@example.com>"`.
    pub from: Option<String>,
    /// How long a notification stays unread before an email tells of it (Synapse's
    /// `notif_delay_before_mail`), as a duration such as `"10m"` (see [`ConfigDuration`]).
    pub notif_delay_before_mail: ConfigDuration,
    /// The name emails give the service, in their subject and text.
    pub app_name: String,
    /// This server's client-API URL as mail readers reach it, for the unsubscribe link;
    /// unset means `well_known.client`, else `https://<server_name>`.
    pub public_baseurl: Option<String>,
    /// Where links to rooms point: `https://matrix.to` (the default) links `#/<room>`, any
    /// other client `#/room/<room>` (Element Web's form).
    pub client_base_url: String,
    /// How long one attempt to hand an email over may take, in seconds.
    pub timeout_secs: u64,
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: None,
            tls: SmtpTls::Starttls,
            user: None,
            password: None,
            from: None,
            // Synapse's default.
            notif_delay_before_mail: ConfigDuration::from_millis(10 * 60 * 1000),
            app_name: "Matrix".to_owned(),
            public_baseurl: None,
            client_base_url: "https://matrix.to".to_owned(),
            timeout_secs: 30,
        }
    }
}

impl SmtpConfig {
    /// The port connected to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

/// `[global.ldap]`: `m.login.password` checked against an LDAP directory (OpenLDAP, Active
/// Directory, ...), accounts created at the first login. The key names are Tuwunel's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct LdapConfig {
    /// The directory server, `ldap://host[:port]` or `ldaps://host[:port]`. Unset (the
    /// default): LDAP is off.
    pub uri: Option<String>,
    /// Where users are searched for, e.g. `ou=people,dc=example,dc=org`.
    pub base_dn: String,
    /// With `{username}` in it (`uid={username},ou=people,dc=example,dc=org`): direct bind,
    /// the user's DN made from the name they typed. Without: the service account that
    /// searches for the user before binding as them (search-then-bind); unset: the search
    /// binds anonymously.
    pub bind_dn: Option<String>,
    /// A file holding the service account's password (trailing newline ignored).
    pub bind_password_file: Option<PathBuf>,
    /// Which entries may log in, e.g. `(memberOf=cn=chat,ou=groups,dc=example,dc=org)`;
    /// `{username}` is replaced by the (escaped) name. Combined with `uid_attribute`.
    pub filter: String,
    /// The attribute holding the login name, which becomes the Matrix localpart (lowercased).
    pub uid_attribute: String,
    /// The attribute holding the display name set at account creation.
    pub name_attribute: String,
    /// The attribute holding the email address recorded on the account at creation.
    pub mail_attribute: String,
    /// Entries matching this filter (and the user's `uid_attribute`) are server admins;
    /// checked at every login and sync. Unset: the admin flag is left alone.
    pub admin_filter: Option<String>,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    pub start_tls: bool,
    /// PEM file of the CA(s) the server's certificate must chain to (`ldaps://` and
    /// StartTLS); unset: the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// How long one directory conversation (connect, TLS, binds, searches) may take before
    /// the login is answered `503` (see [`ConfigDuration`]).
    pub timeout: ConfigDuration,
    /// How often accounts made from the directory are compared with it: those no longer
    /// found (or no longer matching `filter`) are deactivated, admin flags follow
    /// `admin_filter`. Unset (the default): no periodic sync; such users are only refused at
    /// login.
    pub sync_interval: Option<ConfigDuration>,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            uri: None,
            base_dn: String::new(),
            bind_dn: None,
            bind_password_file: None,
            filter: "(objectClass=*)".to_owned(),
            uid_attribute: "uid".to_owned(),
            name_attribute: "cn".to_owned(),
            mail_attribute: "mail".to_owned(),
            admin_filter: None,
            start_tls: false,
            ca_file: None,
            timeout: ConfigDuration::from_millis(5_000),
            sync_interval: None,
        }
    }
}

impl LdapConfig {
    /// Whether LDAP login is configured.
    pub fn enabled(&self) -> bool {
        self.uri.is_some()
    }

    /// Direct bind: `bind_dn` is the user's DN template.
    pub fn direct_bind(&self) -> bool {
        self.bind_dn.as_deref().is_some_and(|dn| dn.contains("{username}"))
    }
}

/// `[global.jwt]`: login with a JSON Web Token (`org.matrix.login.jwt`), with Synapse's
/// `jwt_config` key names.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct JwtConfig {
    pub enabled: bool,
    /// The shared secret (HS256/384/512), or the PEM public key (RS*, PS*, ES*, EdDSA).
    pub secret: Option<String>,
    /// The one JWS algorithm accepted, e.g. `HS256` or `RS256`.
    pub algorithm: Option<String>,
    /// The claim holding the localpart; unset means `sub`.
    pub subject_claim: Option<String>,
    /// The claim holding the display name set when the account is created.
    pub display_name_claim: Option<String>,
    /// When set, `iss` must be present and equal to it.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and name one of them; when unset, a token with an
    /// `aud` is refused.
    pub audiences: Option<Vec<String>>,
}

impl JwtConfig {
    /// The claim holding the localpart.
    pub fn subject_claim(&self) -> &str {
        self.subject_claim.as_deref().unwrap_or("sub")
    }

    /// The algorithm and the key tokens must be signed with; the error names the key at fault.
    pub fn decoding_key(&self) -> Result<(jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey), String> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let name = self.algorithm.as_deref().unwrap_or_default();
        let algorithm: Algorithm = name.parse().map_err(|_| {
            format!(
                "invalid value for key `jwt.algorithm`: `{name}` is not \
                one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )
        })?;
        let secret = self.secret.as_deref().unwrap_or_default().as_bytes();
        let pem_error = |e: jsonwebtoken::errors::Error| {
            format!("invalid value for key `jwt.secret`: {name} needs a PEM public key ({e})")
        };
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => DecodingKey::from_secret(secret),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(secret).map_err(pem_error)?,
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(secret).map_err(pem_error)?,
            Algorithm::EdDSA => DecodingKey::from_ed_pem(secret).map_err(pem_error)?,
        };
        Ok((algorithm, key))
    }
}

/// MatrixRTC settings (Synapse's `matrix_rtc`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MatrixRtcConfig {
    /// The transports clients may use for calls, most preferred first. Served by
    /// `GET /_matrix/client/v1/rtc/transports` (and MSC4143's unstable path) and as
    /// `org.matrix.msc4143.rtc_foci` in `/.well-known/matrix/client`.
    pub transports: Vec<RtcTransportConfig>,
}

/// One MatrixRTC transport: its `type` and the fields of that type, which are passed to
/// clients exactly as written, so types this server knows nothing of work too.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RtcTransportConfig {
    /// The transport type, e.g. `livekit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every other field (for `livekit`: `livekit_service_url`, the URL of the LiveKit JWT
    /// service).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Discovery information served to clients and servers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct WellKnownConfig {
    /// Base URL clients should use, e.g. `https://matrix.example.com`.
    pub client: Option<String>,
    /// `host:port` other servers should use for federation, e.g. `matrix.example.com:443`.
    pub server: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".try_into().expect("valid literal server name"),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 6167,
            listeners: Vec::new(),
            app_service_config_files: Vec::new(),
            max_connections: 10_000,
            request_header_timeout: ConfigDuration::from_millis(30_000),
            request_body_timeout: ConfigDuration::from_millis(60_000),
            keep_alive_timeout: ConfigDuration::from_millis(75_000),
            database_path: PathBuf::from("./data"),
            database_backend: DatabaseBackend::Rocksdb,
            database_url: None,
            database_pool_size: 16,
            database_statement_timeout_ms: None,
            multi_process: false,
            max_request_size: 20 * 1024 * 1024,
            // Room keys for a device offline for weeks in many encrypted rooms run to
            // thousands, at 1–3 kB each.
            to_device_queue_max_messages: 20_000,
            to_device_queue_max_bytes: 32 * 1024 * 1024,
            allow_registration: false,
            registration_token: None,
            registration_requires_token: false,
            allow_federation: false,
            allow_public_rooms_over_federation: false,
            trusted_servers: Vec::new(),
            federation_ca_file: None,
            federation_proxy: None,
            federation_domain_allowlist: Vec::new(),
            federation_domain_denylist: Vec::new(),
            federation_timeout_secs: 30,
            federation_max_backoff_secs: 3600,
            log: "info".to_owned(),
            well_known: WellKnownConfig::default(),
            well_known_client: None,
            well_known_server: None,
            refreshable_access_token_lifetime_secs: 300,
            uiaa_session_lifetime_secs: 600,
            default_room_version: crate::matrix::room_version::DEFAULT,
            presence_enabled: true,
            presence_offline_timeout_secs: 300,
            cache_memory_mib: 128,
            // OWASP's first recommended argon2id setting.
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            user_directory_search_all_local_users: false,
            media_path: None,
            media_backend: MediaBackend::Filesystem,
            media_s3: MediaS3Config::default(),
            max_upload_size: 50 * 1024 * 1024,
            media_legacy_freeze: true,
            media_retention_days: None,
            max_pending_media_uploads: 5,
            media_unused_expiration_secs: 24 * 3600,
            max_image_pixels: 32 * 1024 * 1024,
            url_preview_enabled: false,
            url_preview_ip_range_blacklist: Vec::new(),
            url_preview_ip_range_whitelist: Vec::new(),
            url_preview_domain_blacklist: Vec::new(),
            url_preview_domain_whitelist: Vec::new(),
            url_preview_max_spider_size: 10 * 1024 * 1024,
            url_preview_timeout_secs: 10,
            ip_range_denylist: Vec::new(),
            ip_range_allowlist: Vec::new(),
            push_timeout_secs: 15,
            push_backoff_max_secs: 3600,
            max_event_delay_duration: None,
            // Synapse's `msc4140_max_delayed_events_per_user`.
            max_delayed_events_per_user: 100,
            matrix_rtc: MatrixRtcConfig::default(),
            turn_uris: Vec::new(),
            turn_secret: None,
            turn_username: None,
            turn_password: None,
            turn_ttl: 24 * 3600,
            smtp: SmtpConfig::default(),
            ldap: LdapConfig::default(),
            jwt: JwtConfig::default(),
            trusted_proxies: vec![
                IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            ],
            audit: AuditConfig::default(),
            server_notices: ServerNoticesConfig::default(),
            identity_providers: Vec::new(),
            sso_only: false,
            sso: SsoConfig::default(),
            login_via_existing_session: LoginViaExistingSessionConfig::default(),
            oauth: OAuthConfig::default(),
            rate_limiting: true,
            rate_limit_exempt_admins: true,
            // Synapse's defaults (`synapse/config/ratelimiting.py`).
            rc_message: Rate::new(0.2, 10.0),
            rc_registration: Rate::new(0.17, 3.0),
            rc_registration_token_validity: Rate::new(0.1, 5.0),
            rc_login: LoginRates {
                address: Rate::new(0.003, 5.0),
                account: Rate::new(0.003, 5.0),
                failed_attempts: Rate::new(0.17, 3.0),
            },
            rc_admin_redaction: None,
            rc_joins: JoinRates { local: Rate::new(0.1, 10.0), remote: Rate::new(0.01, 10.0) },
            rc_joins_per_room: Rate::new(1.0, 10.0),
            rc_invites: InviteRates {
                per_room: Rate::new(0.3, 10.0),
                per_user: Rate::new(0.003, 5.0),
                per_issuer: Rate::new(0.3, 10.0),
            },
            rc_3pid_validation: Rate::new(0.003, 5.0),
            rc_media_create: Rate::new(10.0, 50.0),
            rc_presence: PresenceRates { per_user: Rate::new(0.1, 1.0) },
            rc_delayed_event_mgmt: Rate::new(1.0, 5.0),
            rc_reports: Rate::new(1.0, 5.0),
            rc_room_creation: Rate::new(0.016, 10.0),
            rc_user_directory: Rate::new(0.016, 200.0),
            rc_key_requests: Rate::new(20.0, 100.0),
        }
    }
}

/// The outcome of loading: the config plus keys that were present but not understood.
pub struct Loaded {
    pub config: Config,
    pub unknown_keys: Vec<String>,
}

impl Config {
    /// Bytes of the in-memory caches: (state maps, events, room member lists).
    pub fn cache_budgets(&self) -> (usize, usize, usize) {
        let total = usize::try_from(self.cache_memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        (total / 2, total / 4, total / 4)
    }

    /// The server notices user, when notices are on.
    pub fn server_notices_user(&self) -> Option<ruma::OwnedUserId> {
        let localpart = self.server_notices.system_mxid_localpart.as_deref()?;
        crate::matrix::user_id::registrable_user_id(localpart, &self.server_name).ok()
    }

    /// Whether registering needs a registration token.
    pub fn registration_needs_token(&self) -> bool {
        self.registration_requires_token || self.registration_token.is_some()
    }

    /// Load from an optional TOML file (its `[global]` table) and `CONDUIT_*` variables, which
    /// win. A missing file path given explicitly is an error; no path at all means defaults.
    pub fn load(path: Option<&Path>) -> Result<Loaded, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file_exact(path).nested());
        }
        let env = Env::prefixed("CONDUIT_").ignore(&["CONFIG"]).split("__").global();
        Self::extract(figment.merge(env))
    }

    /// Load from TOML text (for tests and tools), with the same checks as `load`.
    pub fn from_toml_str(toml: &str) -> Result<Loaded, String> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml).nested()),
        )
    }

    fn extract(figment: Figment) -> Result<Loaded, String> {
        // `.nested()` maps the `[global]` table to figment's global profile, which overrides the
        // defaults; other top-level tables become profiles that are never selected.
        let config: Config = figment.extract().map_err(|e| describe_figment_error(&e))?;
        let unknown_keys = unknown_keys(&figment);
        config.check()?;
        Ok(Loaded { config: config.resolved(), unknown_keys })
    }

    /// Checks that need more than a type.
    fn check(&self) -> Result<(), String> {
        self.check_database()?;
        if self.max_request_size < 1024 {
            return Err("invalid value for key `max_request_size`: must be at least 1024 bytes".into());
        }
        if !(8..=1_048_576).contains(&self.cache_memory_mib) {
            return Err("invalid value for key `cache_memory_mib`: must be 8 to 1048576".into());
        }
        if self.to_device_queue_max_messages < 1 {
            return Err("invalid value for key `to_device_queue_max_messages`: must be at least 1".into());
        }
        if self.to_device_queue_max_bytes < crate::matrix::limits::MAX_TO_DEVICE_CONTENT_BYTES as u64 {
            return Err("invalid value for key `to_device_queue_max_bytes`: must be at least 65536 (one \
                        message of the largest size)"
                .into());
        }
        if !(1..=600).contains(&self.federation_timeout_secs) {
            return Err("invalid value for key `federation_timeout_secs`: must be 1 to 600".into());
        }
        if !(1..=86_400).contains(&self.federation_max_backoff_secs) {
            return Err("invalid value for key `federation_max_backoff_secs`: must be 1 to 86400".into());
        }
        if crate::matrix::room_version::rules(&self.default_room_version).is_none() {
            return Err(format!(
                "invalid value for key `default_room_version`: `{}` is not supported (1 to 12 are)",
                self.default_room_version
            ));
        }
        if matches!(&self.registration_token, Some(t) if t.is_empty()) {
            return Err("invalid value for key `registration_token`: must not be empty".into());
        }
        if let Some(localpart) = &self.server_notices.system_mxid_localpart
            && crate::matrix::user_id::registrable_user_id(localpart, &self.server_name).is_err()
        {
            return Err(format!(
                "invalid value for key `server_notices.system_mxid_localpart`: `{localpart}` is not \
                 a valid user ID localpart"
            ));
        }
        if let Some(url) = &self.server_notices.system_mxid_avatar_url
            && !url.starts_with("mxc://")
        {
            return Err("invalid value for key `server_notices.system_mxid_avatar_url`: must be an \
                        mxc:// URI"
                .into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(format!("invalid value for key `log`: `{}` is not a log filter", self.log));
        }
        argon2::Params::new(self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism, None)
            .map_err(|e| format!("invalid value for keys `argon2_*`: {e}"))?;
        // Upper bounds keep the millisecond arithmetic far from overflow (a year is plenty).
        const YEAR_SECS: u64 = 365 * 24 * 3600;
        if !(1..=YEAR_SECS).contains(&self.refreshable_access_token_lifetime_secs) {
            return Err(
                "invalid value for key `refreshable_access_token_lifetime_secs`: must be 1 to 31536000"
                    .into(),
            );
        }
        if !(10..=YEAR_SECS).contains(&self.uiaa_session_lifetime_secs) {
            return Err("invalid value for key `uiaa_session_lifetime_secs`: must be 10 to 31536000".into());
        }
        if self.max_upload_size < 1024 {
            return Err("invalid value for key `max_upload_size`: must be at least 1024 bytes".into());
        }
        if self.media_backend == MediaBackend::S3 {
            self.media_s3.check(self.max_upload_size)?;
        }
        if !(60..=YEAR_SECS).contains(&self.media_unused_expiration_secs) {
            return Err("invalid value for key `media_unused_expiration_secs`: must be 60 to 31536000".into());
        }
        if self.media_retention_days == Some(0) {
            return Err("invalid value for key `media_retention_days`: must be at least 1 (or unset)".into());
        }
        // A decoded image takes four bytes a pixel; past a gigapixel no server should try.
        if !(1..=1 << 30).contains(&self.max_image_pixels) {
            return Err("invalid value for key `max_image_pixels`: must be 1 to 1073741824".into());
        }
        if self.url_preview_max_spider_size < 1024 {
            return Err(
                "invalid value for key `url_preview_max_spider_size`: must be at least 1024 bytes".into()
            );
        }
        if !(1..=300).contains(&self.url_preview_timeout_secs) {
            return Err("invalid value for key `url_preview_timeout_secs`: must be 1 to 300".into());
        }
        if self.max_event_delay_duration.is_some_and(|d| d.as_millis() == 0) {
            return Err("invalid value for key `max_event_delay_duration`: must be longer than 0 \
                        (leave it unset to turn delayed events off)"
                .into());
        }
        for (key, patterns) in [
            ("url_preview_domain_blacklist", &self.url_preview_domain_blacklist),
            ("url_preview_domain_whitelist", &self.url_preview_domain_whitelist),
            ("federation_domain_allowlist", &self.federation_domain_allowlist),
            ("federation_domain_denylist", &self.federation_domain_denylist),
        ] {
            if let Some(bad) = patterns.iter().find(|p| !valid_domain_pattern(p)) {
                return Err(format!(
                    "invalid value for key `{key}`: `{bad}` is not a host name or `*.` followed by one"
                ));
            }
        }
        self.check_listeners()?;
        self.check_matrix_rtc()?;
        self.check_turn()?;
        self.check_smtp()?;
        self.check_ldap()?;
        self.check_jwt()?;
        self.check_rates()?;
        self.check_sso()?;
        Ok(())
    }

    /// Every rate limit with its key, as `rate_limits` reads them (`rc_admin_redaction`
    /// resolved to `rc_message` when unset).
    pub fn rates(&self) -> [(&'static str, Rate); 21] {
        [
            ("rc_message", self.rc_message),
            ("rc_admin_redaction", self.rc_admin_redaction.unwrap_or(self.rc_message)),
            ("rc_registration", self.rc_registration),
            ("rc_registration_token_validity", self.rc_registration_token_validity),
            ("rc_login.address", self.rc_login.address),
            ("rc_login.account", self.rc_login.account),
            ("rc_login.failed_attempts", self.rc_login.failed_attempts),
            ("rc_joins.local", self.rc_joins.local),
            ("rc_joins.remote", self.rc_joins.remote),
            ("rc_joins_per_room", self.rc_joins_per_room),
            ("rc_invites.per_room", self.rc_invites.per_room),
            ("rc_invites.per_user", self.rc_invites.per_user),
            ("rc_invites.per_issuer", self.rc_invites.per_issuer),
            ("rc_3pid_validation", self.rc_3pid_validation),
            ("rc_media_create", self.rc_media_create),
            ("rc_presence.per_user", self.rc_presence.per_user),
            ("rc_delayed_event_mgmt", self.rc_delayed_event_mgmt),
            ("rc_reports", self.rc_reports),
            ("rc_room_creation", self.rc_room_creation),
            ("rc_user_directory", self.rc_user_directory),
            ("rc_key_requests", self.rc_key_requests),
        ]
    }

    fn check_database(&self) -> Result<(), String> {
        if self.database_backend == DatabaseBackend::Postgresql {
            match &self.database_url {
                None => {
                    return Err("`database_backend = \"postgresql\"` needs `database_url` (e.g. \
                                postgresql://conduit:password@localhost/conduit)"
                        .into());
                }
                Some(url) if url.parse::<tokio_postgres::Config>().is_err() => {
                    return Err("invalid value for key `database_url`: not a PostgreSQL URL \
                                (postgresql://user:password@host:port/database)"
                        .into());
                }
                Some(_) => {}
            }
        } else if self.multi_process {
            return Err("`multi_process = true` needs `database_backend = \"postgresql\"`: a RocksDB \
                        database belongs to one process"
                .into());
        }
        if !(2..=1000).contains(&self.database_pool_size) {
            return Err("invalid value for key `database_pool_size`: must be 2 to 1000".into());
        }
        if self.database_statement_timeout_ms == Some(0) {
            return Err("invalid value for key `database_statement_timeout_ms`: must be at least 1 \
                        (leave it unset for PostgreSQL's own)"
                .into());
        }
        Ok(())
    }

    /// How to reach PostgreSQL, for `database_backend = "postgresql"`.
    pub fn postgres_options(&self) -> Option<crate::storage::postgres::PgOptions> {
        let url = self.database_url.clone()?;
        Some(crate::storage::postgres::PgOptions {
            url,
            pool_size: self.database_pool_size as usize,
            statement_timeout_ms: self.database_statement_timeout_ms,
            multi_process: self.multi_process,
        })
    }

    fn check_rates(&self) -> Result<(), String> {
        for (key, rate) in self.rates() {
            if let Some(problem) = rate.problem() {
                return Err(format!("invalid value for key `{key}`: {problem}"));
            }
        }
        Ok(())
    }

    fn check_listeners(&self) -> Result<(), String> {
        let mut bound = std::collections::HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let name = format!("listeners[{i}] ({}:{})", listener.address, listener.port);
            if listener.resources.is_empty() {
                return Err(format!(
                    "invalid value for key `listeners`: {name} serves nothing; give it `resources`, \
                     some of \"client\", \"federation\", \"openid\", \"media\", \"metrics\""
                ));
            }
            if listener.serves(ListenerResource::Metrics)
                && listener.serves(ListenerResource::Client)
                && !listener.address.is_loopback()
            {
                return Err(format!(
                    "invalid value for key `listeners`: {name} serves both `client` and `metrics` \
                     on a non-loopback address, which would publish the server's metrics to every \
                     client; serve `metrics` on a listener of its own (for example on 127.0.0.1), \
                     or bind this one to a loopback address"
                ));
            }
            if listener.tls_certificate_path.is_some() != listener.tls_private_key_path.is_some() {
                return Err(format!(
                    "invalid value for key `listeners`: {name} needs both `tls_certificate_path` and \
                     `tls_private_key_path` for TLS, or neither"
                ));
            }
            if listener.port != 0 && !bound.insert((listener.address, listener.port)) {
                return Err(format!("invalid value for key `listeners`: {name} is listed twice"));
            }
        }
        if self.max_connections == 0 {
            return Err("invalid value for key `max_connections`: must be at least 1".into());
        }
        for (key, value) in [
            ("request_header_timeout", self.request_header_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            // Milliseconds below 100 are a typo, an hour is past any sane client.
            if !(100..=3_600_000).contains(&value.as_millis()) {
                return Err(format!("invalid value for key `{key}`: must be 100ms to 1h"));
            }
        }
        Ok(())
    }

    /// The listeners to bind: the configured ones, or the one of `address` and `port`.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if !self.listeners.is_empty() {
            return self.listeners.clone();
        }
        vec![ListenerConfig::plain(
            self.address,
            self.port,
            &[ListenerResource::Client, ListenerResource::Federation],
        )]
    }

    fn check_smtp(&self) -> Result<(), String> {
        let smtp = &self.smtp;
        let Some(host) = &smtp.host else { return Ok(()) };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("invalid value for key `smtp.host`: `{host}` is not a host name"));
        }
        if smtp.port == Some(0) {
            return Err("invalid value for key `smtp.port`: must be 1 to 65535".into());
        }
        if smtp.user.is_some() != smtp.password.is_some() {
            return Err("invalid value for keys `smtp.user`/`smtp.password`: set both or neither".into());
        }
        match &smtp.from {
            None => {
                return Err("invalid value for key `smtp.from`: emails need a sender, such as \
                            `\"Example Chat <noreply@example.com>\"`"
                    .into());
            }
            Some(from) if from.parse::<lettre::message::Mailbox>().is_err() => {
                return Err(format!("invalid value for key `smtp.from`: `{from}` is not an email address"));
            }
            Some(_) => {}
        }
        // A week is far past any digest worth sending; the bound keeps the arithmetic small.
        if smtp.notif_delay_before_mail.as_millis() > 7 * 24 * 3600 * 1000 {
            return Err("invalid value for key `smtp.notif_delay_before_mail`: at most a week".into());
        }
        for (key, url) in [
            ("smtp.public_baseurl", smtp.public_baseurl.as_deref()),
            ("smtp.client_base_url", Some(&*smtp.client_base_url)),
        ] {
            let Some(url) = url else { continue };
            let valid =
                url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !valid {
                return Err(format!("invalid value for key `{key}`: `{url}` is not an http(s) URL"));
            }
        }
        if !(1..=600).contains(&smtp.timeout_secs) {
            return Err("invalid value for key `smtp.timeout_secs`: must be 1 to 600".into());
        }
        Ok(())
    }

    fn check_ldap(&self) -> Result<(), String> {
        let ldap = &self.ldap;
        let Some(uri) = &ldap.uri else { return Ok(()) };
        let scheme = url::Url::parse(uri).ok().filter(|u| u.has_host()).map(|u| u.scheme().to_owned());
        match scheme.as_deref() {
            Some("ldap") => {}
            Some("ldaps") if ldap.start_tls => {
                return Err("invalid value for key `ldap.start_tls`: `ldaps://` is TLS from the start; \
                            StartTLS is for `ldap://`"
                    .into());
            }
            Some("ldaps") => {}
            _ => {
                return Err(format!(
                    "invalid value for key `ldap.uri`: `{uri}` is not an ldap:// or ldaps:// URL with a host"
                ));
            }
        }
        let filters =
            [("ldap.filter", Some(&ldap.filter)), ("ldap.admin_filter", ldap.admin_filter.as_ref())];
        for (key, filter) in filters {
            let Some(filter) = filter else { continue };
            if !(filter.starts_with('(') && filter.ends_with(')')) {
                return Err(format!(
                    "invalid value for key `{key}`: `{filter}` is not an LDAP filter in parentheses"
                ));
            }
        }
        for (key, value) in [
            ("ldap.uid_attribute", &ldap.uid_attribute),
            ("ldap.name_attribute", &ldap.name_attribute),
            ("ldap.mail_attribute", &ldap.mail_attribute),
        ] {
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';') {
                return Err(format!("invalid value for key `{key}`: `{value}` is not an attribute name"));
            }
        }
        if ldap.direct_bind() && ldap.bind_password_file.is_some() {
            return Err(
                "invalid value for key `ldap.bind_password_file`: with `{username}` in `ldap.bind_dn` \
                        each user binds with their own password; leave it unset"
                    .into(),
            );
        }
        if ldap.bind_dn.is_some() && !ldap.direct_bind() && ldap.bind_password_file.is_none() {
            return Err("invalid value for key `ldap.bind_password_file`: the service account in \
                        `ldap.bind_dn` needs its password file"
                .into());
        }
        if !(100..=300_000).contains(&ldap.timeout.as_millis()) {
            return Err("invalid value for key `ldap.timeout`: must be 100ms to 5m".into());
        }
        if ldap.sync_interval.is_some_and(|d| d.as_millis() < 60_000) {
            return Err("invalid value for key `ldap.sync_interval`: must be at least 1m (or unset)".into());
        }
        Ok(())
    }

    fn check_jwt(&self) -> Result<(), String> {
        let jwt = &self.jwt;
        if !jwt.enabled {
            return Ok(());
        }
        if jwt.secret.as_deref().is_none_or(str::is_empty) {
            return Err(
                "invalid value for key `jwt.secret`: JWT login needs the shared secret or public key".into(),
            );
        }
        if jwt.algorithm.is_none() {
            return Err(
                "invalid value for key `jwt.algorithm`: JWT login needs the algorithm, e.g. `HS256`".into()
            );
        }
        jwt.decoding_key()?;
        if jwt.subject_claim.as_deref().is_some_and(str::is_empty) {
            return Err("invalid value for key `jwt.subject_claim`: must not be empty".into());
        }
        Ok(())
    }

    fn check_matrix_rtc(&self) -> Result<(), String> {
        for transport in &self.matrix_rtc.transports {
            if transport.kind.is_empty() {
                return Err("invalid value for key `matrix_rtc.transports`: `type` must not be empty".into());
            }
            if transport.kind == "livekit" {
                let url = transport.fields.get("livekit_service_url").and_then(serde_json::Value::as_str);
                let valid = url
                    .and_then(|u| url::Url::parse(u).ok())
                    .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                if !valid {
                    return Err(
                        "invalid value for key `matrix_rtc.transports`: a `livekit` transport needs \
                                `livekit_service_url`, an http(s) URL"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_turn(&self) -> Result<(), String> {
        const SCHEMES: [&str; 4] = ["turn:", "turns:", "stun:", "stuns:"];
        if let Some(bad) =
            self.turn_uris.iter().find(|u| !SCHEMES.iter().any(|s| u.starts_with(s) && u.len() > s.len()))
        {
            return Err(format!(
                "invalid value for key `turn_uris`: `{bad}` is not a turn:, turns:, stun: or stuns: URI"
            ));
        }
        for (key, value) in [
            ("turn_secret", &self.turn_secret),
            ("turn_username", &self.turn_username),
            ("turn_password", &self.turn_password),
        ] {
            if matches!(value, Some(v) if v.is_empty()) {
                return Err(format!("invalid value for key `{key}`: must not be empty"));
            }
        }
        if self.turn_username.is_some() != self.turn_password.is_some() {
            return Err("invalid value for keys `turn_username`/`turn_password`: set both or neither".into());
        }
        if self.turn_secret.is_some() && self.turn_username.is_some() {
            return Err("invalid value for key `turn_secret`: set either `turn_secret` or \
                        `turn_username`/`turn_password`, not both"
                .into());
        }
        if !self.turn_uris.is_empty() && self.turn_secret.is_none() && self.turn_username.is_none() {
            return Err("invalid value for key `turn_uris`: TURN needs credentials: set `turn_secret` or \
                        `turn_username`/`turn_password`"
                .into());
        }
        if !(1..=365 * 24 * 3600).contains(&self.turn_ttl) {
            return Err("invalid value for key `turn_ttl`: must be 1 to 31536000".into());
        }
        Ok(())
    }

    /// Where media files live.
    pub fn media_dir(&self) -> PathBuf {
        self.media_path.clone().unwrap_or_else(|| self.database_path.join("media"))
    }

    /// Fold the flat aliases into their tables.
    fn resolved(mut self) -> Self {
        if let Some(client) = self.well_known_client.take() {
            self.well_known.client.get_or_insert(client);
        }
        if let Some(server) = self.well_known_server.take() {
            self.well_known.server.get_or_insert(server);
        }
        self
    }
}

/// A length of time as operators write it, as Synapse reads durations: a whole number
/// followed by a unit — `ms`, `s`, `m` (minutes), `h`, `d`, `w` (weeks) or `y` (365 days) —
/// or a number without a unit, which counts milliseconds (also as a TOML integer). `"24h"`,
/// `"90s"`, `"500ms"`, `"7d"`, `86400000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration {
    ms: u64,
}

impl ConfigDuration {
    pub fn from_millis(ms: u64) -> Self {
        Self { ms }
    }

    pub fn as_millis(self) -> u64 {
        self.ms
    }

    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ms)
    }
}

/// The listening sockets systemd passed by socket activation (`LISTEN_PID` naming this
/// process and `LISTEN_FDS` counting descriptors from 3), as raw descriptors; empty when
/// none were passed. The variables are removed, so no child process takes them as its own.
#[cfg(unix)]
pub fn systemd_listen_fds() -> Vec<std::os::fd::RawFd> {
    const FIRST: std::os::fd::RawFd = 3;
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.trim().parse::<i32>().ok());
    // SAFETY: removing variables while no other thread reads the environment: this runs
    // once at start, before the server spawns anything that does.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    match (pid, count) {
        (Some(pid), Some(count)) if pid == std::process::id() && count > 0 => {
            (FIRST..FIRST.saturating_add(count)).collect()
        }
        _ => Vec::new(),
    }
}

/// Parse a [`ConfigDuration`] written as text; the error says what is wrong.
pub fn parse_duration(text: &str) -> Result<ConfigDuration, String> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("`{text}` is not a duration: expected a whole number and a unit, like `24h`"));
    }
    const SECOND: u64 = 1_000;
    let unit_ms = match unit {
        "" | "ms" => 1,
        "s" => SECOND,
        "m" => 60 * SECOND,
        "h" => 3_600 * SECOND,
        "d" => 86_400 * SECOND,
        "w" => 7 * 86_400 * SECOND,
        "y" => 365 * 86_400 * SECOND,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: the unit must be one of ms, s, m, h, d, w, y (or none, for milliseconds)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(ConfigDuration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

impl Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.ms))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"24h\", or a number of milliseconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                parse_duration(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigDuration, E> {
                Ok(ConfigDuration::from_millis(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConfigDuration, E> {
                u64::try_from(v)
                    .map(ConfigDuration::from_millis)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `host.name` or `*.host.name`: letters, digits, `-` and dots, no empty labels.
fn valid_domain_pattern(pattern: &str) -> bool {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn describe_figment_error(error: &figment::Error) -> String {
    let mut parts = Vec::new();
    for e in error.clone() {
        let key = if e.path.is_empty() { "(top level)".to_owned() } else { e.path.join(".") };
        parts.push(format!("invalid value for key `{key}`: {}", e.kind));
    }
    parts.join("; ")
}

/// Keys present in the configuration that `Config` does not read.
fn unknown_keys(figment: &Figment) -> Vec<String> {
    let Ok(value) = figment.extract::<figment::value::Value>() else { return Vec::new() };
    let mut unknown = Vec::new();
    let _: Result<Config, _> = serde_ignored::deserialize(&value, |path| unknown.push(path.to_string()));
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_defaults() {
        let loaded = Config::from_toml_str("").unwrap();
        assert_eq!(loaded.config.server_name, "localhost");
        assert_eq!(loaded.config.port, 6167);
        assert_eq!(loaded.config.database_path, PathBuf::from("./data"));
        assert!(!loaded.config.allow_registration);
        assert_eq!(loaded.config.database_backend, DatabaseBackend::Rocksdb);
        assert_eq!(loaded.config.database_pool_size, 16);
    }

    #[test]
    fn the_postgresql_backend_needs_a_url_and_takes_pool_settings() {
        let loaded = Config::from_toml_str(
            "[global]\ndatabase_backend = \"postgresql\"\n\
             database_url = \"postgresql://conduit:secret@db.internal:5433/conduit\"\n\
             database_pool_size = 4\ndatabase_statement_timeout_ms = 2500\n",
        )
        .unwrap();
        assert_eq!(loaded.config.database_backend, DatabaseBackend::Postgresql);
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let options = loaded.config.postgres_options().unwrap();
        assert_eq!(options.url, "postgresql://conduit:secret@db.internal:5433/conduit");
        assert_eq!(options.pool_size, 4);
        assert_eq!(options.statement_timeout_ms, Some(2500));
        let err = Config::from_toml_str("[global]\ndatabase_backend = \"postgresql\"\n").err().unwrap();
        assert!(err.contains("database_url"), "{err}");
        let err = Config::from_toml_str(
            "[global]\ndatabase_backend = \"postgresql\"\ndatabase_url = \"postgresql://h/d?sslmode=sometimes\"\n",
        )
        .err()
        .unwrap();
        assert!(err.contains("database_url"), "{err}");
        let err = Config::from_toml_str("[global]\ndatabase_pool_size = 1\n").err().unwrap();
        assert!(err.contains("database_pool_size"), "{err}");
        let err = Config::from_toml_str("[global]\ndatabase_backend = \"mysql\"\n").err().unwrap();
        assert!(err.contains("database_backend"), "{err}");
        // A URL without the PostgreSQL backend is kept but unused: RocksDB stays the engine.
        let loaded = Config::from_toml_str("[global]\ndatabase_url = \"postgresql://h/d\"\n").unwrap();
        assert_eq!(loaded.config.database_backend, DatabaseBackend::Rocksdb);
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::from_toml_str("[global]\nport = \"eighty\"").err().unwrap();
        assert!(err.contains("port"), "{err}");
        let err = Config::from_toml_str("[global]\nserver_name = \"not a name!\"").err().unwrap();
        assert!(err.contains("server_name"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported() {
        let loaded =
            Config::from_toml_str("[global]\nport = 1\nprot = 2\n[global.well_known]\nclinet = \"x\"")
                .unwrap();
        assert_eq!(loaded.unknown_keys, vec!["prot".to_owned(), "well_known.clinet".to_owned()]);
    }

    #[test]
    fn media_keys_are_checked() {
        let loaded = Config::from_toml_str(
            "[global]\nurl_preview_ip_range_whitelist = [\"127.0.0.1/32\", \"::1/128\"]\n\
             url_preview_domain_blacklist = [\"*.internal.example\"]",
        )
        .unwrap();
        assert_eq!(loaded.config.url_preview_ip_range_whitelist.len(), 2);
        assert_eq!(loaded.config.media_dir(), PathBuf::from("./data/media"));
        let err = Config::from_toml_str("[global]\nurl_preview_ip_range_whitelist = [\"10.0.0.0/33\"]")
            .err()
            .unwrap();
        assert!(err.contains("url_preview_ip_range_whitelist"), "{err}");
        let err =
            Config::from_toml_str("[global]\nurl_preview_domain_whitelist = [\"http://x\"]").err().unwrap();
        assert!(err.contains("url_preview_domain_whitelist"), "{err}");
        let err = Config::from_toml_str("[global]\nmax_upload_size = 10").err().unwrap();
        assert!(err.contains("max_upload_size"), "{err}");
    }

    #[test]
    fn s3_media_needs_its_keys() {
        let full = "[global]\nmedia_backend = \"s3\"\n[global.media_s3]\nendpoint = \"http://127.0.0.1:9000\"\n\
                    bucket = \"conduit-media\"\naccess_key_id = \"id\"\nsecret_access_key = \"secret\"\n";
        let config = Config::from_toml_str(full).unwrap().config;
        assert_eq!(config.media_backend, MediaBackend::S3);
        assert_eq!((config.media_s3.region.as_str(), config.media_s3.path_style), ("us-east-1", true));
        for (key, err_names) in [
            ("endpoint", "media_s3.endpoint"),
            ("bucket", "media_s3.bucket"),
            ("access_key_id", "CONDUIT_MEDIA_S3__ACCESS_KEY_ID"),
            ("secret_access_key", "media_s3.secret_access_key"),
        ] {
            let text: String =
                full.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect();
            let err = Config::from_toml_str(&text).err().unwrap();
            assert!(err.contains(err_names) && err.contains("needs"), "{key}: {err}");
        }
        for (change, key) in [
            ("endpoint = \"ftp://host\"", "media_s3.endpoint"),
            ("endpoint = \"http://host:9000/path\"", "media_s3.endpoint"),
            ("bucket = \"Not_A_Bucket\"", "media_s3.bucket"),
            ("prefix = \"/abs\"", "media_s3.prefix"),
        ] {
            let name = change.split(' ').next().unwrap();
            let mut text: String =
                full.lines().filter(|l| !l.starts_with(name)).map(|l| format!("{l}\n")).collect();
            text.push_str(change);
            let err = Config::from_toml_str(&text).err().unwrap();
            assert!(err.contains(key), "{change}: {err}");
        }
        let big = full.replace("media_backend", "max_upload_size = 6000000000\nmedia_backend");
        assert!(Config::from_toml_str(&big).err().unwrap().contains("5 GiB"));
        // The filesystem backend ignores the table.
        assert!(Config::from_toml_str("[global]\n[global.media_s3]\nbucket = \"x\"").is_ok());
    }

    #[test]
    fn durations_read_as_synapse_reads_them() {
        for (text, ms) in [
            ("500ms", 500),
            ("90s", 90_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            ("1y", 31_536_000_000),
            ("1500", 1_500),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(text), Ok(ConfigDuration::from_millis(ms)), "{text}");
        }
        for bad in ["", "h", "24 h", "-5s", "1.5h", "24H", "10x", "5sec", "s5", " 5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("999999999999999y").is_err(), "overflow must not wrap");
        let d = parse_duration("36h").unwrap();
        assert_eq!(parse_duration(serde_json::to_value(d).unwrap().as_str().unwrap()), Ok(d));
    }

    #[test]
    fn delayed_event_keys_are_read_and_checked() {
        let loaded = Config::from_toml_str("").unwrap().config;
        assert_eq!((loaded.max_event_delay_duration, loaded.max_delayed_events_per_user), (None, 100));
        let loaded = Config::from_toml_str("[global]\nmax_event_delay_duration = \"24h\"").unwrap().config;
        assert_eq!(loaded.max_event_delay_duration, Some(ConfigDuration::from_millis(86_400_000)));
        let loaded = Config::from_toml_str("[global]\nmax_event_delay_duration = 90000").unwrap().config;
        assert_eq!(loaded.max_event_delay_duration, Some(ConfigDuration::from_millis(90_000)));
        for bad in ["\"0s\"", "\"1 day\"", "-5", "true"] {
            let err = Config::from_toml_str(&format!("[global]\nmax_event_delay_duration = {bad}"))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.contains("max_event_delay_duration"), "{err}");
        }
    }

    #[test]
    fn flat_well_known_aliases_fold_into_the_table() {
        let loaded = Config::from_toml_str("[global]\nwell_known_client = \"https://m.example\"").unwrap();
        assert_eq!(loaded.config.well_known.client.as_deref(), Some("https://m.example"));
    }

    #[test]
    fn rtc_transports_keep_every_field() {
        let loaded = Config::from_toml_str(
            "[global.matrix_rtc]\ntransports = [\n  { type = \"livekit\", livekit_service_url = \"https://rtc.example.com/livekit/jwt\" },\n  { type = \"org.example.sfu\", url = \"wss://sfu.example\", region = \"eu\", weight = 2 },\n]",
        )
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let transports = &loaded.config.matrix_rtc.transports;
        assert_eq!(transports.len(), 2);
        assert_eq!(transports[0].kind, "livekit");
        assert_eq!(transports[0].fields["livekit_service_url"], "https://rtc.example.com/livekit/jwt");
        assert_eq!(transports[1].fields["region"], "eu");
        assert_eq!(transports[1].fields["weight"], 2);

        let err = Config::from_toml_str("[global.matrix_rtc]\ntransports = [{ type = \"livekit\" }]")
            .err()
            .unwrap();
        assert!(err.contains("livekit_service_url"), "{err}");
        let err = Config::from_toml_str(
            "[global.matrix_rtc]\ntransports = [{ type = \"livekit\", livekit_service_url = \"rtc.example.com\" }]",
        )
        .err()
        .unwrap();
        assert!(err.contains("livekit_service_url"), "{err}");
        let err = Config::from_toml_str("[global.matrix_rtc]\ntransports = [{ url = \"x\" }]").err().unwrap();
        assert!(err.contains("matrix_rtc.transports") || err.contains("type"), "{err}");
    }

    /// `CONDUIT_MATRIX_RTC__TRANSPORTS='[{type="livekit",...}]'`: figment parses an
    /// environment value as it parses this string, and nests it under the `__`-split key.
    #[test]
    fn rtc_transports_parse_from_an_environment_value() {
        let value: figment::value::Value =
            r#"[{type="livekit",livekit_service_url="https://rtc.example.com/jwt"}]"#.parse().unwrap();
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::global("matrix_rtc.transports", value));
        let loaded = Config::extract(figment).unwrap();
        let transports = &loaded.config.matrix_rtc.transports;
        assert_eq!(transports.len(), 1);
        assert_eq!(transports[0].kind, "livekit");
        assert_eq!(transports[0].fields["livekit_service_url"], "https://rtc.example.com/jwt");
    }

    #[test]
    fn turn_keys_are_checked() {
        let loaded = Config::from_toml_str(
            "[global]\nturn_uris = [\"turn:turn.example.com:3478?transport=udp\", \"turns:turn.example.com\"]\nturn_secret = \"s\"",
        )
        .unwrap();
        assert_eq!(loaded.config.turn_ttl, 86400);
        for (toml, key) in [
            ("turn_uris = [\"http://turn.example.com\"]\nturn_secret = \"s\"", "turn_uris"),
            ("turn_uris = [\"turn:turn.example.com\"]", "turn_uris"),
            ("turn_username = \"u\"", "turn_username"),
            ("turn_secret = \"s\"\nturn_username = \"u\"\nturn_password = \"p\"", "turn_secret"),
            ("turn_secret = \"\"", "turn_secret"),
            ("turn_ttl = 0", "turn_ttl"),
        ] {
            let err = Config::from_toml_str(&format!("[global]\n{toml}")).err().unwrap();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn server_notice_keys_are_read_and_checked() {
        let off = Config::from_toml_str("").unwrap().config;
        assert_eq!(off.server_notices_user(), None);
        assert!(!off.registration_needs_token());
        let on = Config::from_toml_str(
            "[global]\nregistration_requires_token = true\n[global.server_notices]\nsystem_mxid_localpart = \"notices\"\n\
             system_mxid_display_name = \"Notices\"",
        )
        .unwrap()
        .config;
        assert_eq!(on.server_notices_user().unwrap().as_str(), "@notices:localhost");
        assert_eq!(on.server_notices.room_name, "Server Notices");
        assert!(on.registration_needs_token());
        for (toml, key) in [
            ("system_mxid_localpart = \"Not Valid\"", "system_mxid_localpart"),
            ("system_mxid_avatar_url = \"https://example.com/a.png\"", "system_mxid_avatar_url"),
        ] {
            let err = Config::from_toml_str(&format!("[global.server_notices]\n{toml}")).err().unwrap();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn smtp_keys_are_read_and_checked() {
        let off = Config::from_toml_str("").unwrap().config.smtp;
        assert_eq!((off.host, off.notif_delay_before_mail.as_millis()), (None, 600_000));
        let on = Config::from_toml_str(
            "[global.smtp]\nhost = \"mail.example.com\"\ntls = \"tls\"\nfrom = \"Chat <noreply@example.com>\"\n\
             notif_delay_before_mail = \"2m\"",
        )
        .unwrap();
        assert!(on.unknown_keys.is_empty(), "{:?}", on.unknown_keys);
        let smtp = on.config.smtp;
        assert_eq!(
            (smtp.tls, smtp.port(), smtp.notif_delay_before_mail.as_millis()),
            (SmtpTls::Tls, 465, 120_000)
        );
        for (toml, key) in [
            ("host = \"m\"", "smtp.from"),
            ("host = \"m\"\nfrom = \"not an address\"", "smtp.from"),
            ("host = \"m\"\nfrom = \"a@b.c\"\nuser = \"u\"", "smtp.user"),
            ("host = \"m\"\nfrom = \"a@b.c\"\ntls = \"ssl\"", "smtp.tls"),
            ("host = \"m\"\nfrom = \"a@b.c\"\npublic_baseurl = \"example.com\"", "smtp.public_baseurl"),
            (
                "host = \"m\"\nfrom = \"a@b.c\"\nnotif_delay_before_mail = \"30d\"",
                "smtp.notif_delay_before_mail",
            ),
        ] {
            let err = Config::from_toml_str(&format!("[global.smtp]\n{toml}")).err().unwrap();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn listeners_are_read_and_checked() {
        let loaded = Config::from_toml_str("").unwrap().config;
        let default = loaded.effective_listeners();
        assert_eq!(default.len(), 1);
        assert_eq!((default[0].port, default[0].resources.len()), (6167, 2));
        assert!(
            default[0].serves(ListenerResource::Client) && default[0].serves(ListenerResource::Federation)
        );
        assert!(!default[0].serves(ListenerResource::Metrics));

        let loaded = Config::from_toml_str(
            "[global]\nmax_connections = 50\nrequest_header_timeout = \"5s\"\n\
             [[global.listeners]]\naddress = \"0.0.0.0\"\nport = 8448\nresources = [\"client\", \"federation\"]\n\
             tls_certificate_path = \"/c.pem\"\ntls_private_key_path = \"/k.pem\"\n\
             [[global.listeners]]\naddress = \"127.0.0.1\"\nport = 9090\nresources = [\"metrics\", \"client\"]",
        )
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let config = loaded.config;
        assert_eq!(config.effective_listeners().len(), 2);
        assert_eq!(config.listeners[0].tls_certificate_path.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!((config.max_connections, config.request_header_timeout.as_millis()), (50, 5000));
        // The short names of the TLS keys, and the media resource.
        let loaded = Config::from_toml_str(
            "[[global.listeners]]\naddress = \"0.0.0.0\"\nport = 8448\nresources = [\"federation\", \"media\"]\n\
             tls_certs = \"/c.pem\"\ntls_key = \"/k.pem\"",
        )
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let listener = &loaded.config.listeners[0];
        assert_eq!(listener.tls_private_key_path.as_deref(), Some(Path::new("/k.pem")));
        assert!(listener.serves(ListenerResource::Media));

        for (toml, needle) in [
            // Metrics beside the client API on a public address.
            ("address = \"0.0.0.0\"\nport = 1\nresources = [\"client\", \"metrics\"]", "loopback"),
            (
                "address = \"::\"\nport = 1\nresources = [\"metrics\", \"client\"]",
                "serves both `client` and `metrics`",
            ),
            ("address = \"127.0.0.1\"\nport = 1\nresources = []", "serves nothing"),
            (
                "address = \"127.0.0.1\"\nport = 1\nresources = [\"client\"]\ntls_certificate_path = \"/c\"",
                "neither",
            ),
            ("address = \"127.0.0.1\"\nport = 1\nresources = [\"gopher\"]", "listeners"),
            ("address = \"127.0.0.1\"\nport = 1\nresources = [\"client\"]\ntls = true", "listeners"),
        ] {
            let err = Config::from_toml_str(&format!("[[global.listeners]]\n{toml}"))
                .err()
                .unwrap_or_else(|| panic!("{toml} accepted"));
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let twice = "[[global.listeners]]\naddress = \"127.0.0.1\"\nport = 5\nresources = [\"client\"]\n";
        let err = Config::from_toml_str(&format!("{twice}{twice}")).err().unwrap();
        assert!(err.contains("listed twice"), "{err}");
        for bad in ["max_connections = 0", "request_body_timeout = \"10ms\"", "keep_alive_timeout = \"2h\""] {
            assert!(Config::from_toml_str(&format!("[global]\n{bad}")).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rate_limits_read_as_synapse_writes_them() {
        let defaults = Config::from_toml_str("").unwrap().config;
        assert!(defaults.rate_limiting && defaults.rate_limit_exempt_admins);
        assert_eq!(defaults.rc_message, Rate::new(0.2, 10.0));
        assert_eq!(defaults.rc_login.failed_attempts, Rate::new(0.17, 3.0));
        assert_eq!(defaults.rc_admin_redaction, None);
        // A table may set one field; the other keeps its default. Integers are numbers too.
        let loaded = Config::from_toml_str(
            "[global]\nrc_message = { per_second = 1, burst_count = 30 }\n\
             rc_admin_redaction = { per_second = 2, burst_count = 50 }\n\
             [global.rc_login.address]\nburst_count = 20\n[global.rc_joins]\nlocal = { per_second = 0.5, burst_count = 5 }",
        )
        .unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let c = loaded.config;
        assert_eq!(c.rc_message, Rate::new(1.0, 30.0));
        assert_eq!(c.rc_login.address, Rate::new(0.003, 20.0));
        assert_eq!(c.rc_joins.local, Rate::new(0.5, 5.0));
        assert_eq!(c.rc_joins.remote, Rate::new(0.01, 10.0));
        let rates = c.rates();
        assert_eq!(rates[1], ("rc_admin_redaction", Rate::new(2.0, 50.0)));
        for (toml, key) in [
            ("rc_message = { per_second = 0, burst_count = 3 }", "rc_message"),
            ("rc_reports = { per_second = 1, burst_count = 0 }", "rc_reports"),
            ("rc_admin_redaction = { per_second = 1 }", "rc_admin_redaction"),
            ("[global.rc_invites.per_user]\nper_second = -1", "rc_invites.per_user"),
        ] {
            let err = Config::from_toml_str(&format!("[global]\n{toml}")).err().unwrap();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    /// The shipped example must parse cleanly and mention every key the server reads.
    #[test]
    fn example_config_parses_and_covers_every_key() {
        let text = include_str!("../conduit.toml.example");
        let loaded = Config::from_toml_str(text).unwrap();
        assert!(loaded.unknown_keys.is_empty(), "unknown keys in example: {:?}", loaded.unknown_keys);
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        collect_keys(&defaults, "", &mut missing, text);
        assert!(missing.is_empty(), "conduit.toml.example does not document: {missing:?}");
    }

    fn collect_keys(value: &serde_json::Value, prefix: &str, missing: &mut Vec<String>, text: &str) {
        let serde_json::Value::Object(map) = value else { return };
        for (key, v) in map {
            let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            if v.is_object() {
                if !text.contains(&format!("[global.{full}]")) {
                    missing.push(full.clone());
                }
                collect_keys(v, &full, missing, text);
            } else {
                // Documented either set (`key =`) or commented out (`# key =`).
                let documented = text.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim();
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
                });
                if !documented {
                    missing.push(full);
                }
            }
        }
    }
}
