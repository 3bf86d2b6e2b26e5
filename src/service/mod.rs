//! The logic. Each service owns its tables and receives its dependencies through its
//! constructor; `Services::build` wires them in dependency order (no cycles, no globals).

pub mod account_data;
pub mod accounts;
pub mod admin;
pub mod appservice_admin;
pub mod appservice_ephemeral;
pub mod appservice_sender;
pub mod appservices;
pub mod audit;
pub mod backup;
pub mod cache;
pub mod clock;
pub mod context;
pub mod delayed_events;
pub mod devices;
pub mod email_notifier;
pub mod federation;
pub mod filters;
pub mod jwt;
pub mod key_backup;
pub mod keys;
pub mod ldap;
pub mod ldap_sync;
pub mod leader;
pub mod legacy_sync;
pub mod login_tokens;
pub mod media;
pub mod memory;
pub mod oauth;
pub mod oidc;
pub mod openid;
pub mod outbound;
pub mod outbox;
pub mod passwords;
pub mod presence;
pub mod push;
pub mod push_fanout;
pub mod push_gateway;
pub mod rate_limits;
pub mod registration_tokens;
pub mod rooms;
pub mod server_keys;
pub mod sliding_sync;
pub mod sso;
pub mod stream;
pub mod sync;
pub mod thirdparty;
pub mod threepids;
pub mod to_device;
pub mod uiaa;
pub mod user_directory;
pub mod users;
pub mod voip;

use std::{sync::Arc, time::Duration};

use crate::{
    Result,
    config::Config,
    storage::{GroupSync, KvStore},
};

/// Every service, built once per server.
pub struct Services {
    pub config: Arc<Config>,
    pub appservices: Arc<appservices::Appservices>,
    pub appservice_sender: Arc<appservice_sender::AppserviceSender>,
    pub appservice_ephemeral: Arc<appservice_ephemeral::AppserviceEphemeral>,
    /// Appservices registered and removed at run time (admin API, command line).
    pub appservice_admin: Arc<appservice_admin::AppserviceAdmin>,
    pub users: Arc<users::Users>,
    pub devices: Arc<devices::Devices>,
    pub uiaa: Arc<uiaa::Uiaa>,
    pub accounts: Arc<accounts::Accounts>,
    pub audit: Arc<audit::Audit>,
    pub keys: Arc<keys::Keys>,
    pub to_device: Arc<to_device::ToDevice>,
    pub server_keys: Arc<server_keys::ServerKeys>,
    /// Requests to other servers (inert when federation is off).
    pub federation: Arc<federation::FederationClient>,
    /// Other servers' signing keys, and the notary answers.
    pub remote_keys: Arc<federation::RemoteKeys>,
    /// Outbound transactions to the servers of shared rooms (started with federation on).
    pub federation_sender: Arc<federation::FederationSender>,
    /// Rooms shared with other servers: inbound transactions, joins, reads.
    pub room_federation: Arc<federation::RoomFederation>,
    pub remote_e2ee: Arc<federation::RemoteE2ee>,
    pub stream: Arc<stream::Stream>,
    pub events: Arc<rooms::events::Events>,
    pub room_states: Arc<rooms::state::RoomStates>,
    pub memberships: Arc<rooms::members::Memberships>,
    pub account_data: Arc<account_data::AccountData>,
    pub receipts: Arc<rooms::receipts::Receipts>,
    pub notifications: Arc<push::Notifications>,
    pub relations: Arc<rooms::relations::Relations>,
    pub search: Arc<rooms::search::Search>,
    pub timeline: Arc<rooms::timeline::Timeline>,
    pub visibility: Arc<rooms::visibility::Visibility>,
    pub renderer: Arc<rooms::render::EventRenderer>,
    pub history: Arc<rooms::history::History>,
    pub typing: Arc<rooms::typing::Typing>,
    pub presence: Arc<presence::Presence>,
    pub filters: Arc<filters::Filters>,
    pub sync: Arc<sync::Sync>,
    pub sliding_sync: Arc<sliding_sync::SlidingSync>,
    pub legacy_sync: Arc<legacy_sync::LegacySync>,
    pub aliases: Arc<rooms::aliases::Aliases>,
    pub directory: Arc<rooms::directory::Directory>,
    pub reports: Arc<rooms::reports::Reports>,
    pub room_creation: Arc<rooms::create::RoomCreation>,
    pub membership: Arc<rooms::membership::MembershipActions>,
    pub room_actions: Arc<rooms::actions::RoomActions>,
    pub upgrades: Arc<rooms::upgrade::RoomUpgrades>,
    pub hierarchy: Arc<rooms::hierarchy::Hierarchy>,
    pub user_directory: Arc<user_directory::UserDirectory>,
    pub key_backup: Arc<key_backup::KeyBackup>,
    pub media: Arc<media::Media>,
    pub remote_media: Arc<media::remote::RemoteMedia>,
    pub url_previews: Arc<media::preview::UrlPreviews>,
    pub backups: Arc<backup::Backups>,
    pub threepids: Arc<threepids::ThirdPartyIds>,
    /// The LDAP directory, for password logins and the directory sync.
    pub ldap: Arc<ldap::Ldap>,
    /// `org.matrix.login.jwt`.
    pub jwt: Arc<jwt::JwtLogin>,
    /// Deactivates directory accounts the directory no longer lists.
    pub ldap_sync: Arc<ldap_sync::LdapSync>,
    /// Gives the memory the allocator keeps after a load back to the system.
    pub memory: Arc<memory::Memory>,
    pub openid: Arc<openid::OpenId>,
    pub turn: Arc<voip::Turn>,
    /// Third-party networks, answered by the appservices that bridge them.
    pub thirdparty: Arc<thirdparty::ThirdParty>,
    pub delayed_events: Arc<delayed_events::DelayedEvents>,
    pub outbox: Arc<outbox::Outbox>,
    /// Whether this process runs the once-per-server work (always, when it is alone).
    pub leader: Arc<leader::Leader>,
    pub push_gateways: Arc<push_gateway::PushGateways>,
    /// Email notifications; `None` unless `smtp.host` is configured.
    pub email_notifier: Option<Arc<email_notifier::EmailNotifier>>,
    pub delayed_actions: Arc<rooms::delayed::DelayedActions>,
    pub blocked_rooms: Arc<rooms::blocked::BlockedRooms>,
    pub room_admin: Arc<rooms::admin::RoomAdmin>,
    pub media_admin: Arc<media::admin::MediaAdmin>,
    pub registration_tokens: Arc<registration_tokens::RegistrationTokens>,
    /// One-time login tokens (`m.login.token`).
    pub login_tokens: Arc<login_tokens::LoginTokens>,
    /// The OpenID Connect identity providers (the relying-party side).
    pub oidc: Arc<oidc::Oidc>,
    /// Legacy single sign-on over those providers.
    pub sso: Arc<sso::Sso>,
    /// The built-in OAuth 2.0 authorization server (the OAuth 2.0 API).
    pub oauth: Arc<oauth::OAuthServer>,
    /// The admin API's user flows and server notices, at the top of the graph.
    pub admin: Arc<admin::Admin>,
    group_sync: Arc<GroupSync>,
    pub rate_limits: Arc<rate_limits::RateLimits>,
    store: Arc<dyn KvStore>,
}

impl Services {
    /// Wire the services over an opened, migrated store.
    pub fn build(config: Arc<Config>, store: Arc<dyn KvStore>, clock: Arc<dyn clock::Clock>) -> Result<Self> {
        let passwords = Arc::new(passwords::Passwords::new(&config)?);
        let audit = Arc::new(audit::Audit::new(&store, Arc::clone(&clock), config.audit.clone())?);
        let appservices = Arc::new(appservices::Appservices::new(
            &store,
            Arc::clone(&clock),
            Arc::clone(&audit),
            config.server_name.clone(),
            config.app_service_config_files.clone(),
        )?);
        let users = Arc::new(users::Users::new(&store, passwords, Arc::clone(&clock)));
        let rate_limits = Arc::new(rate_limits::RateLimits::new(
            &store,
            &config,
            Arc::clone(&clock),
            Arc::clone(&users),
            Arc::clone(&appservices),
        )?);
        let devices = Arc::new(devices::Devices::new(
            &store,
            Arc::clone(&clock),
            Duration::from_secs(config.refreshable_access_token_lifetime_secs),
        ));
        let (state_cache, event_cache, roster_cache) = config.cache_budgets();
        // Auth chains take an eighth of the events' share.
        let chain_cache = event_cache / 8;
        let events = Arc::new(rooms::events::Events::new(&store, event_cache - chain_cache));
        let auth_chains =
            Arc::new(rooms::auth_chains::AuthChains::new(&store, Arc::clone(&events), chain_cache));
        let stream = Arc::new(stream::Stream::new(&store)?);
        let keys = Arc::new(keys::Keys::new(&store, Arc::clone(&stream)));
        let queue_limits = to_device::QueueLimits {
            messages: config.to_device_queue_max_messages,
            bytes: config.to_device_queue_max_bytes,
        };
        let to_device = Arc::new(to_device::ToDevice::new(
            &store,
            queue_limits,
            Arc::clone(&devices),
            Arc::clone(&appservices),
            Arc::clone(&stream),
        ));
        let key_backup = Arc::new(key_backup::KeyBackup::new(&store));
        let media = Arc::new(media::Media::new(&store, Arc::clone(&clock), &config)?);
        let url_previews = Arc::new(media::preview::UrlPreviews::new(
            &store,
            Arc::clone(&media),
            Arc::clone(&clock),
            &config,
        )?);
        let backups = Arc::new(backup::Backups::new(&store, Arc::clone(&media)));
        let openid = Arc::new(openid::OpenId::new(&store, Arc::clone(&users), Arc::clone(&clock)));
        let turn = Arc::new(voip::Turn::new(&config, Arc::clone(&clock)));
        let thirdparty = Arc::new(thirdparty::ThirdParty::new(Arc::clone(&appservices)));
        let registration_tokens = Arc::new(registration_tokens::RegistrationTokens::new(
            &store,
            Arc::clone(&clock),
            config.registration_token.clone(),
        ));
        let threepids = Arc::new(threepids::ThirdPartyIds::new(&store, Arc::clone(&clock)));
        let ldap = Arc::new(ldap::Ldap::new(&store, &config.ldap, Arc::clone(&clock))?);
        let jwt = Arc::new(jwt::JwtLogin::new(&config.jwt, Arc::clone(&clock))?);
        let uiaa = Arc::new(uiaa::Uiaa::new(
            &store,
            Arc::clone(&users),
            Arc::clone(&clock),
            Arc::clone(&registration_tokens),
            Arc::clone(&ldap),
            config.uiaa_session_lifetime_secs,
        ));
        let server_keys = Arc::new(server_keys::ServerKeys::load_or_create(
            &store,
            config.server_name.clone(),
            Arc::clone(&clock),
        )?);
        let federation = Arc::new(federation::FederationClient::new(
            &config,
            Arc::clone(&server_keys),
            Arc::clone(&clock),
        )?);
        let remote_media = Arc::new(media::remote::RemoteMedia::new(
            Arc::clone(&media),
            Arc::clone(&federation),
            config.server_name.clone(),
        ));
        let remote_keys = Arc::new(federation::RemoteKeys::new(
            &store,
            Arc::clone(&federation),
            Arc::clone(&server_keys),
            config.trusted_servers.clone(),
            Arc::clone(&clock),
        ));
        let room_states = Arc::new(rooms::state::RoomStates::new(&store, state_cache)?);
        let memberships = Arc::new(rooms::members::Memberships::new(&store, roster_cache));
        let visibility = Arc::new(rooms::visibility::Visibility::new(
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
        ));
        let relations =
            Arc::new(rooms::relations::Relations::new(&store, Arc::clone(&events), Arc::clone(&visibility)));
        let account_data = Arc::new(account_data::AccountData::new(&store, Arc::clone(&stream)));
        let receipts = Arc::new(rooms::receipts::Receipts::new(
            &store,
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&account_data),
            Arc::clone(&stream),
            Arc::clone(&clock),
        ));
        let delayed_events = Arc::new(delayed_events::DelayedEvents::new(
            &store,
            Arc::clone(&clock),
            delayed_events::Limits {
                max_delay_ms: config.max_event_delay_duration.map(|d| d.as_millis()),
                max_per_user: config.max_delayed_events_per_user.into(),
            },
        ));
        let notifications = Arc::new(push::Notifications::new(
            &store,
            Arc::clone(&clock),
            config.server_name.clone(),
            Arc::clone(&account_data),
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&receipts),
            !config.multi_process,
        )?);
        // After `Notifications`: pushers go with the devices that set them.
        let sliding_connections = Arc::new(sliding_sync::Connections::default());
        let login_tokens = Arc::new(login_tokens::LoginTokens::new(&store, Arc::clone(&clock)));
        let accounts = Arc::new(accounts::Accounts::new(
            Arc::clone(&store),
            Arc::clone(&config),
            Arc::clone(&users),
            Arc::clone(&devices),
            Arc::clone(&uiaa),
            Arc::clone(&keys),
            Arc::clone(&to_device),
            Arc::clone(&key_backup),
            Arc::clone(&notifications),
            Arc::clone(&sliding_connections),
            Arc::clone(&delayed_events),
            Arc::clone(&audit),
            Arc::clone(&registration_tokens),
            Arc::clone(&rate_limits),
            Arc::clone(&appservices),
            accounts::Logins {
                ldap: Arc::clone(&ldap),
                jwt: Arc::clone(&jwt),
                threepids: Arc::clone(&threepids),
            },
            Arc::clone(&login_tokens),
        ));
        let oidc = Arc::new(oidc::Oidc::new(&config, Arc::clone(&clock))?);
        let sso = Arc::new(sso::Sso::new(
            Arc::clone(&config),
            Arc::clone(&oidc),
            Arc::clone(&accounts),
            Arc::clone(&users),
            Arc::clone(&uiaa),
            Arc::clone(&login_tokens),
            Arc::clone(&audit),
        ));
        let oauth = Arc::new(oauth::OAuthServer::new(
            &store,
            Arc::clone(&config),
            Arc::clone(&clock),
            Arc::clone(&accounts),
            Arc::clone(&devices),
            Arc::clone(&users),
            Arc::clone(&audit),
            Arc::clone(&rate_limits),
        ));
        let renderer =
            Arc::new(rooms::render::EventRenderer::new(Arc::clone(&relations), Arc::clone(&clock)));
        // Before `Timeline`, which writes the index in each event's batch.
        let search = Arc::new(rooms::search::Search::new(
            &store,
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&visibility),
            Arc::clone(&renderer),
        )?);
        let group_sync = Arc::new(GroupSync::start(Arc::clone(&store))?);
        // Before `Timeline`, which rings the pushers' queues after each commit.
        let outbox = Arc::new(outbox::Outbox::new(
            &store,
            Arc::clone(&clock),
            Duration::from_secs(config.push_backoff_max_secs),
        ));
        let leader = Arc::new(leader::Leader::new(&store, config.multi_process));
        if config.multi_process {
            // A queue opened here while another process leads is run there.
            let stream = Arc::clone(&stream);
            outbox.share_with_other_processes(move |kind, destination| {
                stream.stale_elsewhere(stream::Stale::Queue(kind.to_owned(), destination.to_owned()));
            });
        }
        let email_notifier = email_notifier::EmailNotifier::new(
            &config,
            &store,
            Arc::clone(&outbox),
            Arc::clone(&notifications),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&stream),
            Arc::clone(&clock),
        )?
        .map(Arc::new);
        let push_gateways = Arc::new(push_gateway::PushGateways::new(
            &config,
            Arc::clone(&outbox),
            Arc::clone(&notifications),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&stream),
            Arc::clone(&clock),
            email_notifier.clone(),
        )?);
        let aliases = Arc::new(rooms::aliases::Aliases::new(&store, config.server_name.clone()));
        let appservice_sender = Arc::new(appservice_sender::AppserviceSender::new(
            Arc::clone(&appservices),
            Arc::clone(&accounts),
            Arc::clone(&outbox),
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&aliases),
            Arc::clone(&renderer),
            Arc::clone(&stream),
            appservice_sender::DeviceSources {
                keys: Arc::clone(&keys),
                devices: Arc::clone(&devices),
                to_device: Arc::clone(&to_device),
            },
        ));
        let timeline = Arc::new(rooms::timeline::Timeline::new(
            &store,
            Arc::clone(&server_keys),
            Arc::clone(&stream),
            Arc::clone(&events),
            Arc::clone(&auth_chains),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&relations),
            Arc::clone(&notifications),
            Arc::clone(&search),
            Arc::clone(&delayed_events),
            Arc::clone(&clock),
            Arc::clone(&group_sync),
            Arc::clone(&audit),
        ));
        let history = Arc::new(rooms::history::History::new(
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&visibility),
            Arc::clone(&account_data),
            Arc::clone(&renderer),
            Arc::clone(&relations),
            Arc::clone(&stream),
        ));
        let typing = Arc::new(rooms::typing::Typing::new(
            Arc::clone(&memberships),
            &stream,
            config.multi_process.then_some(&store),
        ));
        let presence = Arc::new(presence::Presence::new(
            &store,
            Arc::clone(&stream),
            Arc::clone(&clock),
            config.presence_enabled,
            config.presence_offline_timeout_secs,
        ));
        let federation_sender = Arc::new(federation::FederationSender::new(
            &store,
            config.server_name.clone(),
            Arc::clone(&federation),
            Arc::clone(&outbox),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&stream),
            Arc::clone(&clock),
            Arc::clone(&typing),
            Arc::clone(&receipts),
            Arc::clone(&presence),
            config.federation_max_backoff_secs,
        )?);
        let remote_e2ee = Arc::new(federation::RemoteE2ee::new(
            &store,
            config.server_name.clone(),
            Arc::clone(&federation),
            Arc::clone(&federation_sender),
            Arc::clone(&keys),
            Arc::clone(&devices),
            Arc::clone(&memberships),
            Arc::clone(&to_device),
            Arc::clone(&stream),
        ));
        let remote_invites = Arc::new(rooms::remote_invites::RemoteInvites::new(&store, Arc::clone(&stream)));
        let room_federation = Arc::new(federation::RoomFederation::new(
            &store,
            config.multi_process,
            Arc::clone(&federation),
            Arc::clone(&remote_keys),
            Arc::clone(&server_keys),
            Arc::clone(&timeline),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&typing),
            Arc::clone(&receipts),
            Arc::clone(&presence),
            Arc::clone(&clock),
            Arc::clone(&users),
            Arc::clone(&remote_invites),
            Arc::clone(&history),
            Arc::clone(&visibility),
            Arc::clone(&remote_e2ee),
        ));
        let appservice_ephemeral = Arc::new(appservice_ephemeral::AppserviceEphemeral::new(
            Arc::clone(&appservices),
            Arc::clone(&outbox),
            Arc::clone(&typing),
            Arc::clone(&receipts),
            Arc::clone(&memberships),
            Arc::clone(&presence),
            Arc::clone(&stream),
        ));
        let appservice_admin = Arc::new(appservice_admin::AppserviceAdmin::new(
            Arc::clone(&appservices),
            Arc::clone(&appservice_sender),
            Arc::clone(&outbox),
        ));
        let filters = Arc::new(filters::Filters::new(&store));
        let room_views = Arc::new(rooms::view::RoomViews::new(
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&receipts),
            Arc::clone(&typing),
            Arc::clone(&notifications),
        ));
        let sync = Arc::new(sync::Sync::new(
            Arc::clone(&stream),
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&history),
            Arc::clone(&account_data),
            Arc::clone(&presence),
            Arc::clone(&notifications),
            Arc::clone(&renderer),
            Arc::clone(&keys),
            Arc::clone(&to_device),
            Arc::clone(&room_views),
            Arc::clone(&remote_invites),
        ));
        let sliding_sync = Arc::new(sliding_sync::SlidingSync::new(
            Arc::clone(&stream),
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&history),
            Arc::clone(&account_data),
            Arc::clone(&presence),
            Arc::clone(&notifications),
            Arc::clone(&renderer),
            Arc::clone(&keys),
            Arc::clone(&to_device),
            Arc::clone(&room_views),
            Arc::clone(&sync),
            sliding_connections,
            Arc::clone(&remote_invites),
        ));
        let directory = Arc::new(rooms::directory::Directory::new(
            &store,
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&appservices),
        ));
        let legacy_sync = Arc::new(legacy_sync::LegacySync::new(
            Arc::clone(&stream),
            Arc::clone(&events),
            Arc::clone(&memberships),
            Arc::clone(&visibility),
            Arc::clone(&history),
            Arc::clone(&account_data),
            Arc::clone(&receipts),
            Arc::clone(&typing),
            Arc::clone(&presence),
            Arc::clone(&directory),
            Arc::clone(&renderer),
        ));
        let reports = Arc::new(rooms::reports::Reports::new(&store, Arc::clone(&clock))?);
        let room_creation = Arc::new(rooms::create::RoomCreation::new(
            Arc::clone(&config),
            Arc::clone(&timeline),
            Arc::clone(&users),
            Arc::clone(&aliases),
            Arc::clone(&directory),
            config.allow_federation.then(|| Arc::clone(&room_federation)),
        ));
        let blocked_rooms = Arc::new(rooms::blocked::BlockedRooms::new(&store, Arc::clone(&clock)));
        let membership = Arc::new(rooms::membership::MembershipActions::new(
            config.server_name.clone(),
            Arc::clone(&timeline),
            Arc::clone(&memberships),
            Arc::clone(&users),
            Arc::clone(&aliases),
            Arc::clone(&blocked_rooms),
            config.server_notices_user(),
            Arc::clone(&appservices),
            config.allow_federation.then(|| Arc::clone(&federation)),
            config.allow_federation.then(|| Arc::clone(&room_federation)),
        ));
        let room_actions = Arc::new(rooms::actions::RoomActions::new(
            Arc::clone(&timeline),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&visibility),
            Arc::clone(&aliases),
            Arc::clone(&directory),
            Arc::clone(&reports),
            Arc::clone(&users),
        ));
        let delayed_actions = Arc::new(rooms::delayed::DelayedActions::new(
            Arc::clone(&delayed_events),
            Arc::clone(&timeline),
            Arc::clone(&room_actions),
            Arc::clone(&membership),
            Arc::clone(&clock),
        ));
        let upgrades = Arc::new(rooms::upgrade::RoomUpgrades::new(
            Arc::clone(&timeline),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&aliases),
            Arc::clone(&users),
        ));
        let hierarchy = Arc::new(rooms::hierarchy::Hierarchy::new(
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&visibility),
            Arc::clone(&directory),
        ));
        let user_directory = Arc::new(user_directory::UserDirectory::new(
            config.server_name.clone(),
            config.user_directory_search_all_local_users,
            Arc::clone(&users),
            Arc::clone(&memberships),
            Arc::clone(&room_states),
            Arc::clone(&events),
            Arc::clone(&visibility),
        ));
        let room_purge = Arc::new(rooms::purge::RoomPurge::new(
            config.server_name.clone(),
            &store,
            Arc::clone(&timeline),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&receipts),
            Arc::clone(&relations),
            Arc::clone(&search),
            Arc::clone(&notifications),
            Arc::clone(&account_data),
            Arc::clone(&aliases),
            Arc::clone(&directory),
            Arc::clone(&delayed_events),
        ));
        let room_admin = Arc::new(rooms::admin::RoomAdmin::new(
            config.server_name.clone(),
            &store,
            Arc::clone(&timeline),
            Arc::clone(&events),
            Arc::clone(&room_states),
            Arc::clone(&memberships),
            Arc::clone(&aliases),
            Arc::clone(&directory),
            Arc::clone(&history),
            Arc::clone(&renderer),
            Arc::clone(&blocked_rooms),
            Arc::clone(&reports),
            Arc::clone(&room_creation),
            Arc::clone(&membership),
            Arc::clone(&room_actions),
            room_purge,
            Arc::clone(&users),
            Arc::clone(&devices),
            Arc::clone(&clock),
        )?);
        let media_admin = Arc::new(media::admin::MediaAdmin::new(
            Arc::clone(&media),
            Arc::clone(&users),
            Arc::clone(&events),
            Arc::clone(&room_states),
        ));
        let admin = Arc::new(admin::Admin::new(
            &store,
            Arc::clone(&config),
            Arc::clone(&users),
            Arc::clone(&devices),
            Arc::clone(&accounts),
            Arc::clone(&memberships),
            Arc::clone(&account_data),
            Arc::clone(&notifications),
            Arc::clone(&room_creation),
            Arc::clone(&membership),
            Arc::clone(&room_actions),
        ));
        let ldap_sync = Arc::new(ldap_sync::LdapSync::new(
            Arc::clone(&ldap),
            Arc::clone(&admin),
            Arc::clone(&users),
            Arc::clone(&accounts),
            Arc::clone(&audit),
            Arc::clone(&clock),
        ));
        let memory = Arc::new(memory::Memory::new(Arc::clone(&clock)));
        // With other processes on the database: what they change is dropped from the
        // caches before it is visible here (held weakly: the services end with the server).
        let (weak_members, weak_events, weak_receipts, weak_typing, weak_notifications, weak_outbox) = (
            Arc::downgrade(&memberships),
            Arc::downgrade(&events),
            Arc::downgrade(&receipts),
            Arc::downgrade(&typing),
            Arc::downgrade(&notifications),
            Arc::downgrade(&outbox),
        );
        stream.start_sharing(move |heard| {
            use stream::{Change, Elsewhere, Stale};
            let room = match heard {
                Elsewhere::Change(Change::Room(room_id)) => Some(Some(room_id.as_ref())),
                Elsewhere::Change(Change::User(user_id)) => {
                    if let Some(members) = weak_members.upgrade() {
                        members.user_changed_elsewhere(user_id);
                    }
                    None
                }
                Elsewhere::Change(Change::RoomMates(_)) => None,
                Elsewhere::Stale(Stale::Event(event_id)) => {
                    if let Some(events) = weak_events.upgrade() {
                        events.rewritten_elsewhere(event_id);
                    }
                    None
                }
                Elsewhere::Stale(Stale::AccountData(user_id, kind)) => {
                    if kind == push::PUSH_RULES
                        && let Some(notifications) = weak_notifications.upgrade()
                    {
                        notifications.rules_changed_elsewhere(Some(user_id));
                    }
                    None
                }
                Elsewhere::Stale(Stale::Pusher(user_id)) => {
                    if let Some(notifications) = weak_notifications.upgrade()
                        && let Err(e) = notifications.pusher_set_elsewhere(Some(user_id))
                    {
                        tracing::warn!(error = %e, "noting another process's pusher failed");
                    }
                    None
                }
                Elsewhere::Stale(Stale::Queue(kind, destination)) => {
                    // Only the leader runs it (another process would hand it on again).
                    if let Some(outbox) = weak_outbox.upgrade()
                        && outbox.is_leading()
                    {
                        outbox.run_by_name(kind, destination);
                    }
                    None
                }
                Elsewhere::Lost => {
                    if let Some(notifications) = weak_notifications.upgrade() {
                        notifications.rules_changed_elsewhere(None);
                        if let Err(e) = notifications.pusher_set_elsewhere(None) {
                            tracing::warn!(error = %e, "reading the pushers again failed");
                        }
                    }
                    Some(None)
                }
            };
            if let Some(room) = room {
                if let Some(members) = weak_members.upgrade() {
                    members.changed_elsewhere(room);
                }
                if let Some(events) = weak_events.upgrade() {
                    events.changed_elsewhere(room);
                }
                if let Some(receipts) = weak_receipts.upgrade() {
                    receipts.changed_elsewhere(room);
                }
                if let Some(typing) = weak_typing.upgrade() {
                    typing.changed_elsewhere(room);
                }
            }
        });
        Ok(Self {
            config,
            appservices,
            appservice_sender,
            appservice_ephemeral,
            appservice_admin,
            users,
            devices,
            uiaa,
            accounts,
            audit,
            keys,
            to_device,
            server_keys,
            federation,
            federation_sender,
            room_federation,
            remote_e2ee,
            remote_keys,
            stream,
            events,
            room_states,
            memberships,
            account_data,
            receipts,
            notifications,
            relations,
            search,
            timeline,
            visibility,
            renderer,
            history,
            typing,
            presence,
            filters,
            sync,
            sliding_sync,
            legacy_sync,
            aliases,
            directory,
            reports,
            room_creation,
            membership,
            room_actions,
            upgrades,
            hierarchy,
            user_directory,
            key_backup,
            media,
            remote_media,
            url_previews,
            backups,
            threepids,
            ldap,
            jwt,
            ldap_sync,
            memory,
            openid,
            turn,
            thirdparty,
            delayed_events,
            outbox,
            leader,
            push_gateways,
            email_notifier,
            delayed_actions,
            blocked_rooms,
            room_admin,
            media_admin,
            registration_tokens,
            login_tokens,
            oidc,
            sso,
            oauth,
            admin,
            group_sync,
            rate_limits,
            store,
        })
    }

    /// The storage engine's numbers (for the metrics).
    pub fn store_stats(&self) -> crate::storage::StoreStats {
        self.store.stats()
    }

    /// Group commit's rounds and batch sizes (for the metrics).
    pub fn group_sync_stats(&self) -> crate::storage::group_sync::GroupSyncStats {
        self.group_sync.stats()
    }

    /// Each in-memory cache's counters, by name (for the metrics).
    pub fn cache_stats(&self) -> Vec<(&'static str, cache::CacheStats)> {
        vec![
            ("events", self.events.cache_stats()),
            ("state_groups", self.room_states.cache_stats()),
            ("room_rosters", self.memberships.cache_stats()),
        ]
    }

    /// Whether this process can serve now: its database answers (a round trip on
    /// PostgreSQL; a process whose database is gone answers errors, so a load balancer
    /// should send requests elsewhere). Blocks for that round trip. With other processes
    /// on the database, this one must also hear them: one that lost its bus connection
    /// would serve stale answers.
    pub fn check_storage(&self) -> Result<()> {
        self.store.ping()?;
        self.stream.ensure_in_touch()
    }

    /// Persist what is held in memory and flush storage; called once at shutdown.
    pub fn shutdown(&self) -> Result<()> {
        self.devices.flush_last_seen()?;
        if let Err(e) = self.stream.leave() {
            tracing::warn!(error = %e, "telling the other processes this one stops failed");
        }
        Ok(self.store.flush()?)
    }
}
