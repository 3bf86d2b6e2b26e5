//! The catalogue: every table the server stores, with its key layout, value type and value
//! version, declared once. Opening a database creates exactly these tables; a table not
//! declared here cannot be read or written.
//!
//! Record types are plain data: they say what is stored, never what it means for Matrix.

use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue as RawJsonValue;

use super::{codec::KeyCodec, table::TableDef};

/// Description of one table, for opening the engine and for documentation.
#[derive(Debug, Clone, Copy)]
pub struct TableInfo {
    pub name: &'static str,
    pub key_layout: &'static str,
    pub value_type: &'static str,
    pub value_version: u8,
}

macro_rules! catalogue {
    ($(
        $(#[$doc:meta])*
        $konst:ident = $name:literal, key $layout:literal: $key:ty => $value:ty, version $version:literal;
    )*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("\n\nKey layout: `", $layout, "`.")]
            pub const $konst: TableDef<$key, $value> = TableDef::new($name, $version);
        )*

        /// Every table, in declaration order.
        pub const ALL_TABLES: &[TableInfo] = &[$(
            TableInfo {
                name: $name,
                key_layout: $layout,
                value_type: stringify!($value),
                value_version: $version,
            },
        )*];
    };
}

catalogue! {
    /// Database-wide facts, such as the schema version.
    META = "meta", key "name": String => u64, version 1;
    /// One row per account ever created; deactivated accounts stay so their name is never reused.
    USERS = "users", key "user_id": OwnedUserId => UserRecord, version 1;
    /// Global profile fields of local users.
    PROFILES = "profiles", key "user_id": OwnedUserId => ProfileRecord, version 1;
    /// A user's devices; a prefix scan on `user_id` lists them in device-id order.
    DEVICES = "devices", key "user_id, device_id": (OwnedUserId, OwnedDeviceId) => DeviceRecord, version 1;
    /// Live access tokens, keyed by the SHA-256 of the token: the token itself is never stored.
    ACCESS_TOKENS = "access_tokens", key "sha256(token)": TokenHash => AccessTokenRecord, version 1;
    /// Live refresh tokens, keyed by the SHA-256 of the token.
    REFRESH_TOKENS = "refresh_tokens", key "sha256(token)": TokenHash => RefreshTokenRecord, version 1;
    /// User-interactive authentication sessions in progress.
    UIAA_SESSIONS = "uiaa_sessions", key "session_id": String => UiaaSessionRecord, version 2;
    /// This server's signing key pairs; `current` signs new events.
    SERVER_SIGNING_KEYS = "server_signing_keys", key "name": String => SigningKeyRecord, version 1;
    /// This server's former signing keys (public halves), by key ID, with when each was
    /// retired: `old_verify_keys` of its key response.
    OLD_SIGNING_KEYS = "old_signing_keys", key "key_id": String => OldSigningKeyRecord, version 1;
    /// Other servers' key responses as fetched (from them or a notary), by server name.
    REMOTE_SERVER_KEYS = "remote_server_keys", key "server_name": String => RemoteServerKeysRecord, version 1;
    /// Every room this server takes part in: version, graph tip and current state group.
    ROOMS = "rooms", key "room_id": OwnedRoomId => RoomRecord, version 1;
    /// Every accepted event, by ID, with its place in the stream and the state before it.
    PDUS = "pdus", key "event_id": OwnedEventId => PduRecord, version 1;
    /// A room's events in stream order: history paging scans a room prefix.
    TIMELINE = "timeline", key "room_id, stream": (OwnedRoomId, u64) => OwnedEventId, version 1;
    /// Invites of local users to rooms this server does not have, received from the
    /// inviting server (`PUT /invite`), and what became of them: `invite` until the user
    /// joins through that server (the row is then removed) or rejects it (`leave`, with the
    /// leave event the inviting server accepted). `/sync` reads them by user.
    REMOTE_INVITES = "remote_invites", key "user_id, room_id": (OwnedUserId, OwnedRoomId) => RemoteInviteRecord, version 1;
    /// Joins of local users to rooms of other servers that the resident server accepted but
    /// that this server has not seated yet: it is fetching the room's state (the join asked
    /// the resident to leave the members out of its answer). Removed once the room is seated;
    /// a row left at start-up is taken up again.
    PENDING_JOINS = "pending_joins", key "room_id": OwnedRoomId => PendingJoinRecord, version 1;
    /// Events fetched backwards from other servers (history older than anything the room
    /// had here), by backfill position: 1 is the newest such event, higher ones are older.
    /// `/messages` reads them after the room's `timeline`, as the positions below 0.
    BACKFILL = "backfill", key "room_id, backfill": (OwnedRoomId, u64) => OwnedEventId, version 1;
    /// The auth chain of state events (and of other events given to the room engine): every
    /// event reachable through `auth_events`, the event itself not included. Written once the
    /// whole chain is stored; missing rows are computed from the auth events' chains.
    AUTH_CHAINS = "auth_chains", key "event_id": OwnedEventId => Vec<OwnedEventId>, version 1;
    /// The global stream: every event in the order it was accepted; sync tokens are positions.
    STREAM = "stream", key "stream": u64 => StreamRecord, version 1;
    /// Room state as deduplicated deltas: a group is its parent plus a few changes, with a
    /// full snapshot every so often so no chain is long.
    STATE_GROUPS = "state_groups", key "group": u64 => StateGroupRecord, version 1;
    /// The current state of each room, one row per (type, state_key).
    ROOM_STATE = "room_state", key "room_id, type, state_key": (OwnedRoomId, String, String) => OwnedEventId, version 1;
    /// Room → members, with each member's latest membership.
    ROOM_MEMBERS = "room_members", key "room_id, user_id": (OwnedRoomId, OwnedUserId) => MembershipRecord, version 1;
    /// User → rooms, the same rows as `room_members` seen from the user.
    USER_ROOMS = "user_rooms", key "user_id, room_id": (OwnedUserId, OwnedRoomId) => MembershipRecord, version 1;
    /// Client transaction IDs already used, per device, and the event each produced.
    TXN_IDS = "txn_ids", key "user_id, device_id, request path": (OwnedUserId, OwnedDeviceId, String) => OwnedEventId, version 1;
    /// Local room aliases.
    ROOM_ALIASES = "room_aliases", key "alias": OwnedRoomAliasId => AliasRecord, version 1;
    /// The same aliases by room, to list or move them.
    ALIASES_BY_ROOM = "aliases_by_room", key "room_id, alias": (OwnedRoomId, OwnedRoomAliasId) => (), version 1;
    /// Rooms published in the room directory.
    PUBLIC_ROOMS = "public_rooms", key "room_id": OwnedRoomId => (), version 1;
    /// Rooms application services published in their own directories, one list per
    /// (appservice, third-party network): the spec's application service room directory.
    APPSERVICE_ROOMS = "appservice_rooms", key "appservice_id, network_id, room_id": (String, String, OwnedRoomId) => (), version 1;
    /// Reports of events, rooms and users, for admins.
    REPORTS = "reports", key "report_id": u64 => ReportRecord, version 1;
    /// Named counters; `stream_high_water` bounds every stream position ever handed out.
    COUNTERS = "counters", key "name": String => u64, version 1;
    /// Durable ID sequences: the last value each has handed out (`stream`, `state_group`,
    /// `report`). Written only through `KvStore::next_ids` and `raise_sequence`.
    SEQUENCES = "sequences", key "name": String => u64, version 1;
    /// Each conduit process sharing the database (`multi_process`): the stream position it
    /// has published, below which it has nothing in flight (see `service::stream`).
    STREAM_WRITERS = "stream_writers", key "member": u64 => u64, version 1;
    /// Account data per user: global (room "") or per room, by type.
    ACCOUNT_DATA = "account_data", key "user_id, room_id (empty: global), type": (OwnedUserId, String, String) => AccountDataRecord, version 1;
    /// Each user's account data change feed: the latest change of each piece, by position.
    ACCOUNT_DATA_CHANGES = "account_data_changes", key "user_id, stream": (OwnedUserId, u64) => AccountDataChange, version 1;
    /// Each user's latest receipt per room, receipt type and thread ("" when unthreaded).
    RECEIPTS = "receipts", key "room_id, user_id, receipt_type, thread": (OwnedRoomId, OwnedUserId, String, String) => ReceiptRecord, version 1;
    /// Each room's receipt change feed: the latest change of each receipt, by position.
    RECEIPT_CHANGES = "receipt_changes", key "room_id, stream": (OwnedRoomId, u64) => ReceiptChange, version 1;
    /// Relations: each child event under its parent, by relation type and position.
    RELATIONS = "relations", key "parent_event_id, rel_type, stream": (OwnedEventId, String, u64) => RelationRecord, version 1;
    /// Threads of a room by their latest reply's position, for `/threads`.
    THREAD_ACTIVITY = "thread_activity", key "room_id, stream": (OwnedRoomId, u64) => OwnedEventId, version 1;
    /// Each thread root's latest reply position.
    THREAD_LATEST = "thread_latest", key "root_event_id": OwnedEventId => u64, version 1;
    /// Events with a relation row under them (kept when the rows go): one point read tells
    /// whether an event's bundled aggregations need the relation scans.
    RELATION_PARENTS = "relation_parents", key "parent_event_id": OwnedEventId => (), version 1;
    /// Each room's bump stamp: the position of its latest event that moves it up a room list.
    ROOM_BUMPS = "room_bumps", key "room_id": OwnedRoomId => u64, version 1;
    /// A room's events by origin timestamp, for `timestamp_to_event`.
    ROOM_TIMESTAMPS = "room_timestamps", key "room_id, origin_server_ts, stream": (OwnedRoomId, u64, u64) => OwnedEventId, version 1;
    /// Retired in schema version 4 (its rows moved to `push_counts`); read only by that migration.
    PUSH_ACTIONS = "push_actions", key "user_id, room_id, stream": (OwnedUserId, OwnedRoomId, u64) => PushActionRecord, version 1;
    /// Events that notify a user and that the user has not read yet, per room, thread key
    /// (`main` outside threads) and position, each with the user's notification and
    /// highlight totals in that room and thread up to it: unread counts are the latest totals
    /// less the totals at the read position, two lookups however long the history. Rows at or
    /// before the read position go when a receipt passes them, and all of a room's when the
    /// user leaves it.
    PUSH_COUNTS = "push_counts", key "user_id, room_id, thread, stream": (OwnedUserId, OwnedRoomId, String, u64) => PushCountRecord, version 1;
    /// Per user, room and thread key with notifications: the totals up to the rows removed,
    /// and the read position they were removed at.
    PUSH_COUNT_BASES = "push_count_bases", key "user_id, room_id, thread": (OwnedUserId, OwnedRoomId, String) => PushCountBase, version 1;
    /// Notifications per user across rooms for the users who have pushers (their pushers'
    /// and email's queue), written after the event by the push fan-out from `push_log`.
    NOTIFICATIONS = "notifications", key "user_id, stream": (OwnedUserId, u64) => NotificationRecord, version 1;
    /// Classes of push rules (rules that differ only in their owner's user ID), by durable
    /// ID: the template text and whether it reads what a class cannot stand in for. Class 0
    /// is the server defaults and has no row.
    PUSH_CLASSES = "push_classes", key "class": u64 => PushClassRecord, version 1;
    /// Per user, the class their notifications count in from a stream position on (after
    /// it), written when their rules change; a user without rows is in the class of their
    /// current rules for all time.
    PUSH_EPOCHS = "push_epochs", key "user_id, from": (OwnedUserId, u64) => PushEpochRecord, version 1;
    /// Per room, class and thread key, the class's running notification and highlight
    /// totals at each event that notifies it: a member's unread counts are their class's
    /// totals between their read position and now, corrected by their own `push_counts` rows.
    PUSH_CLASS_COUNTS = "push_class_counts", key "room_id, class, thread, stream": (OwnedRoomId, u64, String, u64) => PushClassCount, version 1;
    /// The latest row of `push_class_counts` per room, class and thread key.
    PUSH_CLASS_HEADS = "push_class_heads", key "room_id, class, thread": (OwnedRoomId, u64, String) => PushClassHead, version 1;
    /// Per room and event that notifies anyone: each class's actions and the members
    /// evaluated on their own, for `/notifications` and the push fan-out.
    PUSH_LOG = "push_log", key "room_id, stream": (OwnedRoomId, u64) => PushLogRecord, version 1;
    /// The rooms of `push_log` in stream order, for the push fan-out.
    PUSH_LOG_ORDER = "push_log_order", key "stream": u64 => OwnedRoomId, version 1;
    /// Pushers as clients set them, per user, app ID and push key, with the device that set them.
    PUSHERS = "pushers", key "user_id, app_id, pushkey": (OwnedUserId, String, String) => PusherRecord, version 2;
    /// Each device's identity keys as uploaded (signed by the device).
    DEVICE_KEYS = "device_keys", key "user_id, device_id": (OwnedUserId, OwnedDeviceId) => Box<RawJsonValue>, version 1;
    /// Unclaimed one-time keys per device, by `<algorithm>:<key id>`.
    ONE_TIME_KEYS = "one_time_keys", key "user_id, device_id, key_id": (OwnedUserId, OwnedDeviceId, String) => Box<RawJsonValue>, version 1;
    /// Each device's fallback key per algorithm, and whether it was handed out.
    FALLBACK_KEYS = "fallback_keys", key "user_id, device_id, algorithm": (OwnedUserId, OwnedDeviceId, String) => FallbackKeyRecord, version 1;
    /// Cross-signing keys per user and usage (master, self_signing, user_signing).
    CROSS_SIGNING_KEYS = "cross_signing_keys", key "user_id, usage": (OwnedUserId, String) => Box<RawJsonValue>, version 1;
    /// Signatures added to keys after upload: on a device (by ID) or cross-signing key (by public key).
    KEY_SIGNATURES = "key_signatures", key "target_user, target_key, signer_user, signer_key_id": (OwnedUserId, String, OwnedUserId, String) => String, version 1;
    /// The device-list change feed: each user's latest change, by position.
    DEVICE_LIST_CHANGES = "device_list_changes", key "stream": u64 => OwnedUserId, version 1;
    /// Each user's latest device-list change position.
    DEVICE_LIST_LATEST = "device_list_latest", key "user_id": OwnedUserId => u64, version 1;
    /// To-device messages waiting for their device, in stream order.
    TO_DEVICE = "to_device", key "user_id, device_id, stream": (OwnedUserId, OwnedDeviceId, u64) => ToDeviceRecord, version 1;
    /// A to-device delivery cut short by the per-sync limit: under the token that response
    /// answered with, the position of the last message it held, so coming back with that
    /// token acknowledges only what was delivered.
    TO_DEVICE_DELIVERED = "to_device_delivered", key "user_id, device_id, next_batch": (OwnedUserId, OwnedDeviceId, u64) => u64, version 1;
    /// To-device transactions already sent, per sending device.
    TO_DEVICE_TXNS = "to_device_txns", key "user_id, device_id, txn_id": (OwnedUserId, OwnedDeviceId, String) => (), version 1;
    /// To-device messages for devices of an application service's users that the appservice
    /// takes in its transactions (MSC2409, for registrations with `org.matrix.msc3202`): the
    /// place of each in its device's queue (`to_device`), in the appservice's stream order.
    APPSERVICE_TO_DEVICE = "appservice_to_device", key "appservice_id, stream, user_id, device_id": (String, u64, OwnedUserId, OwnedDeviceId) => (), version 1;
    /// Each user's dehydrated device (MSC3814): its ID and the client's encrypted pickle.
    DEHYDRATED_DEVICES = "dehydrated_devices", key "user_id": OwnedUserId => DehydratedDeviceRecord, version 1;
    /// Saved sync filters per user.
    FILTERS = "filters", key "user_id, filter_id": (OwnedUserId, String) => Box<RawJsonValue>, version 1;
    /// Last known presence of each local user.
    PRESENCE = "presence", key "user_id": OwnedUserId => PresenceRecord, version 1;
    /// The presence change feed: each user's latest change, by position.
    PRESENCE_CHANGES = "presence_changes", key "stream": u64 => OwnedUserId, version 1;
    /// Who is typing in each room, written only by processes sharing a PostgreSQL database
    /// (`multi_process`), so that a room mate syncing through another process sees it;
    /// a process alone keeps typing in memory only.
    TYPING = "typing", key "room_id": OwnedRoomId => TypingRecord, version 1;
    /// The full-text inverted index: one row per term of each searchable event, so a search
    /// is a prefix scan per query word and room; the value carries what filtering, ranking
    /// and visibility need without loading the event.
    SEARCH_TERMS = "search_terms", key "room_id, term, stream": (OwnedRoomId, String, u64) => SearchPostingRecord, version 1;
    /// The terms each indexed event wrote, so a redaction can remove exactly those rows.
    SEARCH_EVENTS = "search_events", key "event_id": OwnedEventId => SearchedEventRecord, version 1;
    /// Each user's server-side key backup versions that are not deleted; the highest is current.
    BACKUP_VERSIONS = "backup_versions", key "user_id, version": (OwnedUserId, u64) => BackupVersionRecord, version 1;
    /// The highest backup version each user was ever given, so a deleted version's number is
    /// never handed out again (a client still holding it must not write into a new backup).
    BACKUP_LAST_VERSIONS = "backup_last_versions", key "user_id": OwnedUserId => u64, version 1;
    /// Backed-up room keys: deleting a version or a room's keys is one prefix delete.
    BACKUP_KEYS = "backup_keys", key "user_id, version, room_id, session_id": (OwnedUserId, u64, OwnedRoomId, String) => BackupKeyRecord, version 1;
    /// Local media with content, by media ID (the path part of `mxc://<server>/<media_id>`).
    /// The bytes live in the media directory under their SHA-256, so equal content is stored once.
    MEDIA = "media", key "media_id": String => MediaRecord, version 1;
    /// Media IDs handed out by `POST /media/v1/create` whose content has not arrived yet.
    MEDIA_PENDING = "media_pending", key "media_id": String => PendingMediaRecord, version 1;
    /// The same pending IDs by uploader, to count a user's pending uploads with a prefix scan.
    MEDIA_PENDING_BY_USER = "media_pending_by_user", key "user_id, media_id": (OwnedUserId, String) => u64, version 1;
    /// Other servers' media fetched over federation, by server and media ID: its file and
    /// metadata, kept until purged (`purge_media_cache`). Its thumbnails are stored in
    /// `media_thumbnails` under `<server>/<media_id>`, which no local media ID can be.
    REMOTE_MEDIA = "remote_media", key "server_name, media_id": (String, String) => RemoteMediaRecord, version 1;
    /// Stored thumbnails of local media (and of fetched remote media), by size and method.
    MEDIA_THUMBNAILS = "media_thumbnails", key "media_id, width, height, method": (String, u64, u64, String) => ThumbnailRecord, version 1;
    /// Who uses each content file: a row per media or thumbnail naming it. A file is deleted
    /// only when its last row goes.
    MEDIA_FILE_REFS = "media_file_refs", key "sha256, user (media:<id> or thumbnail:<id>:<w>x<h>:<method>)": (ContentHash, String) => (), version 1;
    /// URL preview results, kept for a while so a link posted in a busy room is fetched once.
    URL_PREVIEWS = "url_previews", key "url": String => UrlPreviewRecord, version 1;
    /// OpenID tokens a user asked for, keyed by the SHA-256 of the token; each lives an hour.
    OPENID_TOKENS = "openid_tokens", key "sha256(token)": TokenHash => OpenIdTokenRecord, version 1;
    /// One-time login tokens (`m.login.token`): made by single sign-on and by
    /// `login/get_token`, keyed by the SHA-256 of the token; each lives minutes.
    LOGIN_TOKENS = "login_tokens", key "sha256(token)": TokenHash => LoginTokenRecord, version 1;
    /// Accounts at identity providers linked to local accounts (Synapse's
    /// `user_external_ids`): the provider's ID and subject (`sub`) → the local user.
    USER_EXTERNAL_IDS = "user_external_ids", key "idp_id, subject": (String, String) => ExternalIdRecord, version 1;
    /// The same links by local user, to find a user's providers.
    EXTERNAL_IDS_BY_USER = "external_ids_by_user", key "user_id, idp_id, subject": (OwnedUserId, String, String) => (), version 1;
    /// Devices signed in through an identity provider, by the provider session they came
    /// from (`sid`, or "" when the provider named none), for back-channel logout.
    SSO_SESSIONS = "sso_sessions", key "idp_id, subject, sid, (user_id, device_id)": (String, String, String, (OwnedUserId, OwnedDeviceId)) => u64, version 1;
    /// The same by device, so a device that goes (or logs in again) takes its row along.
    SSO_SESSIONS_BY_DEVICE = "sso_sessions_by_device", key "user_id, device_id": (OwnedUserId, OwnedDeviceId) => SsoSessionRecord, version 1;
    /// Until when a user approved, on the account page, that their cross-signing keys may be
    /// replaced without user-interactive auth (the `m.oauth` stage).
    CROSS_SIGNING_RESETS = "cross_signing_resets", key "user_id": OwnedUserId => u64, version 1;
    /// OAuth 2.0 clients registered dynamically (RFC 7591), by client ID.
    OAUTH_CLIENTS = "oauth_clients", key "client_id": String => OAuthClientRecord, version 1;
    /// Browser sessions of this server's own pages (OAuth 2.0 sign-in and the account page),
    /// keyed by the SHA-256 of the cookie.
    BROWSER_SESSIONS = "browser_sessions", key "sha256(cookie)": TokenHash => BrowserSessionRecord, version 1;
    /// Delayed events (MSC4140) waiting to be sent, by delay ID.
    DELAYED_EVENTS = "delayed_events", key "delay_id": String => DelayedEventRecord, version 1;
    /// The same events by the time they are due, for the timer that sends them.
    DELAYED_EVENTS_DUE = "delayed_events_due", key "send_ts, delay_id": (u64, String) => (), version 1;
    /// The same events by owner, to list and count a user's.
    DELAYED_EVENTS_BY_USER = "delayed_events_by_user", key "user_id, delay_id": (OwnedUserId, String) => (), version 1;
    /// Delayed state events by the state they would set, with their owner: another user's
    /// write to that state cancels them.
    DELAYED_EVENTS_BY_STATE = "delayed_events_by_state", key "room_id, type, state_key, delay_id": (OwnedRoomId, String, String, String) => OwnedUserId, version 1;
    /// Transaction IDs of delayed sends, per device and request path, and the delay ID each
    /// produced, so a retransmission gets the same delay ID.
    DELAYED_EVENT_TXNS = "delayed_event_txns", key "user_id, device_id, request path": (OwnedUserId, OwnedDeviceId, String) => String, version 1;
    /// The outbox's queues: per kind of destination and destination, the stream position
    /// delivered up to.
    OUTBOX_QUEUES = "outbox_queues", key "kind, destination": (String, String) => OutboxQueueRecord, version 1;
    /// Federation EDUs that must not be lost (to-device messages, device-list and signing-key
    /// updates), per destination server and sequence number, as JSON, until a transaction
    /// carrying them is acknowledged.
    FEDERATION_EDUS = "federation_edus", key "destination, seq": (String, u64) => String, version 1;
    /// Other servers' users' device lists as last learnt (a `/user/devices` resync, then
    /// the `m.device_list_update` and `m.signing_key_update` EDUs applied on top), for users
    /// sharing a room with a local user: `/keys/query` is answered from here when fresh.
    REMOTE_DEVICE_LISTS = "remote_device_lists", key "user_id": OwnedUserId => RemoteDeviceListRecord, version 1;
    /// Local users' device lists as last told to other servers (the stream ID of the last
    /// change and the keys then), so the next change sends only what changed, naming the
    /// last stream ID as its `prev_id`.
    DEVICE_LISTS_SENT = "device_lists_sent", key "user_id": OwnedUserId => DeviceListSentRecord, version 1;
    /// Email notifications' secrets, by name: `unsubscribe`, the HMAC key of the unsubscribe
    /// links' tokens (base64), made on first start with SMTP configured.
    EMAIL_SECRETS = "email_secrets", key "name": String => String, version 1;
    /// The audit log, by sequence number: each record's JSON exactly as its hash covers it.
    AUDIT_LOG = "audit_log", key "seq": u64 => String, version 1;
    /// Rooms an admin blocked: local users may not join, be invited to or knock on them.
    BLOCKED_ROOMS = "blocked_rooms", key "room_id": OwnedRoomId => BlockedRoomRecord, version 1;
    /// Room deletions asked for through the admin API (`DELETE /_synapse/admin/v2/rooms`),
    /// by delete ID: what was asked, how far it got and what it did.
    ROOM_DELETIONS = "room_deletions", key "delete_id": String => RoomDeletionRecord, version 1;
    /// Registration tokens the admin API made, with their use counts and expiry.
    REGISTRATION_TOKENS = "registration_tokens", key "token": String => RegistrationTokenRecord, version 1;
    /// Each user's server notices room, made on their first notice.
    SERVER_NOTICE_ROOMS = "server_notice_rooms", key "user_id": OwnedUserId => OwnedRoomId, version 1;
    /// Per-user rate-limit overrides (Synapse's `ratelimit_override`), set by admins.
    RATELIMIT_OVERRIDES = "ratelimit_overrides", key "user_id": OwnedUserId => RateLimitOverrideRecord, version 1;
    /// Application service registrations added through the admin API (or `conduit
    /// appservice add`), by ID; those in `app_service_config_files` are read from their files.
    APPSERVICE_REGISTRATIONS = "appservice_registrations", key "id": String => AppserviceRegistrationRecord, version 1;
    /// Accounts whose password lives in the LDAP directory: the directory entry each was
    /// made from (or linked to at its first LDAP login).
    LDAP_ACCOUNTS = "ldap_accounts", key "user_id": OwnedUserId => LdapAccountRecord, version 1;
    /// Third-party identifiers on accounts, by medium (`email`, `msisdn`) and address.
    THREEPIDS = "threepids", key "user_id, medium, address": (OwnedUserId, String, String) => ThreepidRecord, version 1;
}

/// The key under `META` that holds the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// The key under `META` that holds the version of the search index's format (tokenizer and
/// rows): when it differs from what the build writes, the index is rebuilt from the events.
pub const SEARCH_INDEX_VERSION_KEY: &str = "search_index_version";

/// SHA-256 of a secret token; the only form in which tokens are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even the hash stays out of logs: only enough to tell two apart.
        write!(f, "TokenHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

impl KeyCodec for TokenHash {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        <[u8; 32]>::decode_key(input).map(TokenHash)
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = String::deserialize(d)?;
        let bytes =
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(s).map_err(serde::de::Error::custom)?;
        bytes.try_into().map(TokenHash).map_err(|_| serde::de::Error::custom("hash length"))
    }
}

/// SHA-256 of a media file's content: its name in the media directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Lower-case hex, as the file is named.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl KeyCodec for ContentHash {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        <[u8; 32]>::decode_key(input).map(ContentHash)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad content hash"))
    }
}

/// An account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id PHC string; `None` once deactivated (or for accounts that cannot use a password).
    pub password_hash: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default)]
    pub admin: bool,
    /// Locked by an admin: every request with the account's tokens is refused (soft logout)
    /// until unlocked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    /// Suspended by an admin (MSC3823): the account may read and leave, not act.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Shadow-banned by an admin: sends, invites and room creation seem to succeed and do
    /// nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_banned: bool,
    /// Deactivated with erasure: the profile was cleared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    /// Synapse's user type (`bot`, `support`), set by an admin; `None` for ordinary users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
}

/// Profile fields shown to other users.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub displayname: Option<String>,
    pub avatar_url: Option<OwnedMxcUri>,
}

/// A device (one login session) and the hashes of its current tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub created_ms: u64,
    pub last_seen_ip: Option<String>,
    pub last_seen_ms: Option<u64>,
    /// The `User-Agent` of the last sighting; absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_user_agent: Option<String>,
    /// The device's one live access token.
    pub access_token: Option<TokenHash>,
    /// The device's one live refresh token, if it logged in with refresh tokens.
    pub refresh_token: Option<TokenHash>,
    /// A session an admin opened as the user ("login as"): not listed among the user's own
    /// devices.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// The OAuth 2.0 client whose session this device is, if it signed in through the OAuth
    /// 2.0 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client: Option<String>,
    /// The refresh token spent last, still accepted until `until_ms`, so a client whose
    /// refresh answer was lost can repeat it (OAuth 2.0 sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_refresh_token: Option<PreviousRefreshToken>,
}

/// A spent refresh token kept valid for a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRefreshToken {
    pub hash: TokenHash,
    pub until_ms: u64,
}

/// What an access token proves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// Refreshable tokens expire; others live until logout.
    pub expires_ms: Option<u64>,
}

/// What a refresh token may renew.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// Progress of one user-interactive authentication session, and the request it is bound to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UiaaSessionRecord {
    /// The account being authenticated, when the endpoint is called with a token.
    pub user_id: Option<OwnedUserId>,
    /// The method of the request the session was started for.
    pub method: String,
    /// The path of the request the session was started for.
    pub path: String,
    /// The request's parameters given so far: its body without `auth` and without secrets.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Stage types completed so far.
    pub completed: Vec<String>,
    pub expires_ms: u64,
    /// Registration: the account the session created once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_user: Option<OwnedUserId>,
    /// Registration: the stored registration token the session's token stage used, counted
    /// as a pending use of it until the session registers or expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token: Option<String>,
}

/// An ed25519 signing key pair of this server.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// The key ID's version part (`ed25519:<version>`).
    pub version: String,
    /// PKCS#8 DER of the key pair, base64.
    pub pkcs8: String,
    pub created_ms: u64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord").field("version", &self.version).finish_non_exhaustive()
    }
}

/// A retired signing key of this server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OldSigningKeyRecord {
    /// The public key, unpadded base64.
    pub public_key: String,
    /// When it was replaced (ms since the epoch): `expired_ts`.
    pub expired_ms: u64,
}

/// Another server's keys as last fetched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteServerKeysRecord {
    /// The key response as received, with its signatures (a notary serves it on).
    pub response: String,
    /// Its `valid_until_ts`.
    pub valid_until_ms: u64,
    /// When it was fetched.
    pub fetched_ms: u64,
}

/// A local user's invite to (or knock on) a room of another server, or its rejection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteInviteRecord {
    /// `invite` or `knock`, or `leave` once rejected or retracted.
    pub membership: String,
    /// The stream position of the latest change, for sync.
    pub stream: u64,
    pub room_version: RoomVersionId,
    /// The server that sent the invite or took the knock: the one to join or leave through.
    pub via: String,
    /// The member event (the invite, then the rejection): its ID and signed PDU JSON.
    pub event_id: OwnedEventId,
    pub event: Box<RawJsonValue>,
    /// The stripped state the inviting server sent (`type`, `state_key`, `sender`,
    /// `content` of each event).
    pub invite_state: Vec<Box<RawJsonValue>>,
}

/// A join accepted by another server whose room is not seated here yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingJoinRecord {
    pub user_id: OwnedUserId,
    pub room_version: RoomVersionId,
    /// The join event as the resident server accepted it: signed PDU JSON.
    pub event: Box<RawJsonValue>,
    /// The servers to fetch the room's state from, the one that took the join first.
    pub servers: Vec<String>,
}

/// A room: its version and where its graph and state stand now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    /// Events with no successor yet: the `prev_events` of the next event.
    pub forward_extremities: Vec<OwnedEventId>,
    /// The greatest depth in the room.
    pub depth: u64,
    /// The state group of the current state.
    pub state_group: u64,
}

/// An accepted event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PduRecord {
    /// Position in the global stream.
    pub stream: u64,
    /// The state group of the room state before this event.
    pub state_before: u64,
    /// The event JSON (the room graph's form, with `event_id` and `room_id`).
    pub pdu: Box<RawJsonValue>,
    /// The sending device and its transaction ID, echoed to that device only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnOrigin>,
    /// The delayed event (MSC4140) it was sent from, echoed to its sender only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_id: Option<String>,
    /// What the room engine decided about it; absent (accepted) for every event stored
    /// before statuses existed and for every local send.
    #[serde(default, skip_serializing_if = "EventStatus::is_accepted")]
    pub status: EventStatus,
    /// The state group of the room state after this event, for a state event (a message's
    /// state after is its `state_before`). Absent on events stored before it was recorded,
    /// where it is `state_before` plus the event itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_after: Option<u64>,
    /// The room's current-state group just before this event took its stream position, when
    /// that is not `state_before` (an event on a fork, whose own state is its fork's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_before: Option<u64>,
    /// For an event fetched backwards from another server, its backfill position (see the
    /// `backfill` table); its `stream` is then 0: it never entered the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<u64>,
}

/// Where an event stands in the room graph (the spec's checks on receipt of a PDU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Passed every check: part of the room's graph and its state.
    #[default]
    Accepted,
    /// Failed the authorization rules against its auth events or the state before it: kept
    /// so that it is not fetched again, never part of any state or timeline.
    Rejected,
    /// Passed against the state before it but not against the room's current state: part
    /// of the graph (a later event may cite it), not shown to clients, not a forward
    /// extremity.
    SoftFailed,
    /// Known only as another event's auth or state event, with no place in the timeline.
    Outlier,
}

impl EventStatus {
    pub fn is_accepted(&self) -> bool {
        *self == EventStatus::Accepted
    }
}

/// Which device sent an event, under which transaction ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOrigin {
    pub device_id: OwnedDeviceId,
    pub txn_id: String,
}

/// A delayed event waiting to be sent: what to send, as whom, and its timer. It is due at
/// `running_since_ms + delay_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelayedEventRecord {
    pub user_id: OwnedUserId,
    /// The device that scheduled it (gone devices do not stop it).
    pub device_id: Option<OwnedDeviceId>,
    pub room_id: OwnedRoomId,
    pub kind: String,
    /// Present for a state event.
    pub state_key: Option<String>,
    /// The content as the client sent it.
    pub content: Box<RawJsonValue>,
    pub delay_ms: u64,
    /// When it was scheduled or last restarted.
    pub running_since_ms: u64,
}

impl DelayedEventRecord {
    /// When the event is due.
    pub fn send_ts(&self) -> u64 {
        self.running_since_ms.saturating_add(self.delay_ms)
    }
}

/// One position of the global stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamRecord {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
}

/// A state group: `parent`'s state with `changes` applied (a full snapshot has no parent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateGroupRecord {
    pub parent: Option<u64>,
    /// How many groups lie between this one and its snapshot.
    pub chain_len: u32,
    /// `(type, state_key, event_id)`.
    pub changes: Vec<(String, String, OwnedEventId)>,
    /// `(type, state_key)` entries of the parent this group no longer has (a resolved state
    /// can drop keys, which one event never does). Always empty in a snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<(String, String)>,
}

/// A user's latest membership in a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: String,
    pub event_id: OwnedEventId,
    pub stream: u64,
    /// The user asked to forget the room after leaving it.
    #[serde(default)]
    pub forgotten: bool,
    /// While joined: the position of the event that made them join. Later member events
    /// (a new display name) keep it, so sync can tell a new join from a profile change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<u64>,
}

impl MembershipRecord {
    /// When the current join began (rows written before `joined_at` existed fall back to
    /// their latest member event).
    pub fn joined_since(&self) -> u64 {
        self.joined_at.unwrap_or(self.stream)
    }
}

/// A local room alias.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

/// A user's own rate limit: `messages_per_second` 0 exempts them from every limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateLimitOverrideRecord {
    pub messages_per_second: u64,
    pub burst_count: u64,
}

/// A report about an event, a room or a user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportRecord {
    pub reporter: OwnedUserId,
    pub room_id: Option<OwnedRoomId>,
    pub event_id: Option<OwnedEventId>,
    pub user_id: Option<OwnedUserId>,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub received_ms: u64,
}

/// One occurrence of a term in an event: which event, and the facts about it that search
/// filters, ranks and checks visibility by.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchPostingRecord {
    pub event_id: OwnedEventId,
    /// The event type (which also says which key, body, name or topic, the text came from).
    pub kind: String,
    pub sender: OwnedUserId,
    /// The state group before the event, which its history visibility is read from.
    pub state_before: u64,
    /// How often the term occurs in the event's text.
    pub occurrences: u32,
    /// The text's length in words.
    pub length: u32,
}

/// Where an indexed event's rows are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchedEventRecord {
    pub room_id: OwnedRoomId,
    pub stream: u64,
    pub terms: Vec<String>,
}

/// A key backup version: what clients need to encrypt into it, and how many keys it holds
/// (kept here so uploads need not count rows).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    pub algorithm: String,
    /// Algorithm-dependent JSON object (the backup's public key and its signatures).
    pub auth_data: Box<RawJsonValue>,
    pub count: u64,
    /// Bumped whenever the version's keys change; clients compare it to skip a download.
    pub etag: u64,
}

/// One backed-up session key: the client's JSON as sent, and the metadata that decides
/// whether a later upload replaces it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupKeyRecord {
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    pub data: Box<RawJsonValue>,
}

/// A local media item with content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The content file.
    pub sha256: ContentHash,
    pub size: u64,
    /// As the uploader declared it (`Content-Type` of the upload).
    pub content_type: Option<String>,
    /// As the uploader named it (`filename` of the upload).
    pub filename: Option<String>,
    /// The uploading user; for URL preview images, the user who asked for the preview.
    pub uploader: OwnedUserId,
    pub created_ms: u64,
    /// Uploaded while unauthenticated media was frozen: the legacy `/_matrix/media/*`
    /// download and thumbnail endpoints do not serve it.
    #[serde(default)]
    pub frozen: bool,
    /// For images fetched for a URL preview, the URL they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// The admin who quarantined it: nobody may download it or its thumbnails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<OwnedUserId>,
    /// Protected by an admin: exempt from quarantine by room or user and from bulk deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
}

/// A blocked room: who blocked it and when.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockedRoomRecord {
    pub user_id: OwnedUserId,
    pub blocked_ms: u64,
}

/// One room deletion: its request, status and outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomDeletionRecord {
    pub room_id: OwnedRoomId,
    pub requested_by: OwnedUserId,
    pub requested_ms: u64,
    /// `scheduled`, `active`, `complete` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// The request's options, as JSON (`block`, `purge`, `force_purge`, `new_room_user_id`,
    /// `room_name`, `message`).
    pub options: serde_json::Value,
    /// What the shutdown did: `kicked_users`, `failed_to_kick_users`, `local_aliases`,
    /// `new_room_id`.
    pub outcome: serde_json::Value,
}

/// A media ID reserved for a later upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingMediaRecord {
    pub uploader: OwnedUserId,
    pub created_ms: u64,
    /// After this the ID is no longer accepted for upload and is swept.
    pub expires_ms: u64,
}

/// Another server's media item as fetched over federation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteMediaRecord {
    /// The content file.
    pub sha256: ContentHash,
    pub size: u64,
    /// As the origin sent it.
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// When it was fetched (ms since the epoch).
    pub fetched_ms: u64,
    /// The admin who quarantined it: nobody may download it or its thumbnails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<OwnedUserId>,
}

/// A stored thumbnail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub sha256: ContentHash,
    pub size: u64,
    pub content_type: String,
    /// The thumbnail's real dimensions (never more than the original's).
    pub width: u32,
    pub height: u32,
}

/// One outbox queue's place in the stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxQueueRecord {
    /// Everything at or before this stream position was delivered (or given up).
    pub delivered: u64,
}

/// A remote user's device list as this server holds it. Keys are JSON text as received.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteDeviceListRecord {
    /// The stream ID of the last update applied (or of the resync).
    pub stream_id: u64,
    /// The stream IDs applied lately, newest last: a next update naming only these as its
    /// `prev_id` follows on without a gap.
    pub recent: Vec<u64>,
    /// An update could not be applied (it followed one never seen): the list is fetched
    /// again before it is used.
    pub stale: bool,
    /// Device ID to the device's keys (with `unsigned.device_display_name` when known).
    pub devices: std::collections::BTreeMap<String, String>,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
}

/// A local user's device list as last sent to other servers. Keys are JSON text.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceListSentRecord {
    /// The stream position of the change last sent (the next update's `prev_id`).
    pub stream_id: u64,
    /// Device ID to the device's keys and display name as sent.
    pub devices: std::collections::BTreeMap<String, String>,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
}

/// A URL preview as served: the OpenGraph object, and when it was fetched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UrlPreviewRecord {
    pub fetched_ms: u64,
    pub og: Box<RawJsonValue>,
}

/// Whose identity an OpenID token vouches for, and until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenIdTokenRecord {
    pub user_id: OwnedUserId,
    pub expires_ms: u64,
}

/// What a one-time login token logs into, until when, and, for one made by single sign-on,
/// the provider session it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginTokenRecord {
    pub user_id: OwnedUserId,
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<SsoSessionRecord>,
}

/// A registered OAuth 2.0 client: its metadata as registered (RFC 7591's answer, without
/// the ID), read again through the protocol rules when used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OAuthClientRecord {
    pub metadata: serde_json::Value,
    pub registered_ms: u64,
}

/// A signed-in browser: who, since and until when, and how they signed in (the provider
/// session, when an identity provider vouched for them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrowserSessionRecord {
    pub user_id: OwnedUserId,
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<SsoSessionRecord>,
}

/// A sign-in at an identity provider: the provider, the subject and the provider's session
/// ID (`sid`; empty when it gave none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoSessionRecord {
    pub idp_id: String,
    pub subject: String,
    #[serde(default)]
    pub sid: String,
}

/// The local account a provider account is linked to, since when, and the email address the
/// provider gave at the time (when the mapping names one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExternalIdRecord {
    pub user_id: OwnedUserId,
    pub linked_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A registration token: how often it may be used, how often it is being and has been used,
/// and until when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationTokenRecord {
    /// `None`: any number of times.
    pub uses_allowed: Option<u64>,
    /// Registrations that passed the token stage and have not finished (or expired) yet.
    pub pending: u64,
    /// Registrations completed with it.
    pub completed: u64,
    /// Milliseconds since the epoch after which it is refused; `None`: never.
    pub expiry_time: Option<u64>,
}

/// An application service registration added at run time: the text as the admin sent it
/// (YAML or JSON), read with the same checks as a registration file at every start. It holds
/// the appservice's tokens as written: the `hs_token` is sent to the appservice as it is, as
/// a registration file holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppserviceRegistrationRecord {
    pub text: String,
    /// Milliseconds since the epoch.
    pub added_ms: u64,
}

/// The directory entry an account belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapAccountRecord {
    /// The entry's login name as the directory spells it (its `uid_attribute`).
    pub uid: String,
    /// The entry's DN when it was linked.
    pub dn: String,
    pub linked_ms: u64,
}

/// A third-party identifier on an account: when it was added and validated (the same
/// moment for addresses the company directory vouches for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreepidRecord {
    pub added_ms: u64,
    pub validated_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes_round_trip_through_hex() {
        let hash = ContentHash(std::array::from_fn(|i| (i * 7) as u8));
        assert_eq!(ContentHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(ContentHash::from_hex("zz"), None);
        assert_eq!(ContentHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn table_names_are_unique_and_plain() {
        let mut names: Vec<_> = ALL_TABLES.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL_TABLES.len(), "duplicate table name in catalogue");
        for t in ALL_TABLES {
            assert!(t.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", t.name);
            assert!(t.value_version >= 1);
        }
    }
}

/// A piece of account data and the stream position of its last change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountDataRecord {
    pub content: Box<RawJsonValue>,
    pub stream: u64,
}

/// Which piece of account data changed at a position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountDataChange {
    /// The room ID, or "" for global data.
    pub room: String,
    pub kind: String,
}

/// Where a user has read up to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub event_id: OwnedEventId,
    pub ts: u64,
    /// Stream position of this receipt's change.
    pub stream: u64,
    /// Stream position of the receipted event.
    pub event_stream: u64,
}

/// Which receipt changed at a position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiptChange {
    pub user_id: OwnedUserId,
    pub receipt_type: String,
    pub thread: String,
}

/// A room's typing users as of a stream position (`typing`, several processes only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TypingRecord {
    /// The position of the room's last typing change.
    pub position: u64,
    /// Each typing user and when their notification ends, in milliseconds since the Unix
    /// epoch by the writing host's clock.
    pub users: Vec<(OwnedUserId, u64)>,
}

/// A user's presence as last set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ms: u64,
    pub stream: u64,
}

/// A child in a relation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelationRecord {
    pub event_id: OwnedEventId,
    /// The child's event type.
    pub kind: String,
    pub sender: OwnedUserId,
}

/// An event that notifies a user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushActionRecord {
    pub event_id: OwnedEventId,
    pub highlight: bool,
    /// The thread root, for events in a thread.
    pub thread: Option<String>,
}

/// One unread notification of a user, with the user's totals in its room and thread up to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushCountRecord {
    pub event_id: OwnedEventId,
    pub highlight: bool,
    /// Notifications (this one included) and highlights of the user in this room and thread
    /// up to this one, since the room's first.
    pub notified: u64,
    pub highlighted: u64,
    /// The same totals of what the user's class counted for these events (rows written
    /// before classes were counted have none): unread counts add the user's own totals and
    /// take away these from their class's.
    #[serde(default)]
    pub class_notified: u64,
    #[serde(default)]
    pub class_highlighted: u64,
}

/// A class of push rules: a user's rules with their user ID and localpart as placeholders.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushClassRecord {
    pub template: String,
    pub personal: bool,
}

/// The class a user's notifications count in from a position on; `None`: in none (every
/// event is evaluated for them on their own).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PushEpochRecord {
    pub class: Option<u64>,
}

/// A class's running totals in a room and thread up to an event.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PushClassCount {
    pub notified: u64,
    pub highlighted: u64,
}

/// The latest of a class's totals in a room and thread, and its position.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PushClassHead {
    pub stream: u64,
    pub notified: u64,
    pub highlighted: u64,
}

/// Who an event notifies: the actions of each class that it notifies, and the members
/// evaluated on their own (with their actions, if it notifies them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushLogRecord {
    pub event_id: OwnedEventId,
    /// `None` in rows from before schema version 5, which name every member notified.
    pub sender: Option<OwnedUserId>,
    /// The thread root, for an event in a thread.
    pub thread: Option<String>,
    pub ts: u64,
    pub classes: Vec<PushLogClass>,
    pub alone: Vec<PushLogMember>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushLogClass {
    pub class: u64,
    pub actions: serde_json::Value,
    pub highlight: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushLogMember {
    pub user_id: OwnedUserId,
    /// The actions, when the event notifies them; `None`: it does not.
    pub actions: Option<serde_json::Value>,
    pub highlight: bool,
}

/// The totals at the last of a user's notification rows removed in a room and thread.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PushCountBase {
    pub notified: u64,
    pub highlighted: u64,
    /// What the user's class counted for the same events (see `PushCountRecord`).
    #[serde(default)]
    pub class_notified: u64,
    #[serde(default)]
    pub class_highlighted: u64,
    /// The read position the rows were removed at: none at or before it is left.
    pub upto: u64,
}

/// A notification as `/notifications` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// The push rule actions, as the spec's JSON.
    pub actions: serde_json::Value,
    pub highlight: bool,
    pub ts: u64,
}

/// A pusher, and the device whose access token set it: the pusher goes with that device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PusherRecord {
    /// `None` for pushers stored before devices were recorded (schema version 2 and older).
    pub device_id: Option<OwnedDeviceId>,
    /// When the pusher was set, milliseconds since the epoch (0 for pushers stored before
    /// this was recorded); gateways receive it as `pushkey_ts`.
    #[serde(default)]
    pub created_ms: u64,
    /// The pusher as the client set it.
    pub pusher: Box<RawJsonValue>,
}

/// A device's fallback key for one algorithm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FallbackKeyRecord {
    pub key_id: String,
    pub key: Box<RawJsonValue>,
    pub used: bool,
}

/// A to-device message waiting for delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToDeviceRecord {
    pub sender: OwnedUserId,
    pub kind: String,
    pub content: Box<RawJsonValue>,
}

/// A user's dehydrated device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DehydratedDeviceRecord {
    pub device_id: OwnedDeviceId,
    /// The client's `device_data`, kept opaque.
    pub device_data: Box<RawJsonValue>,
}
