//! Glue between the room graph and ruma's authorization rules: which state events authorize
//! a new event, and the check of an event against its auth events and the state before it.

use ruma::{
    EventId, OwnedEventId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res,
};
use serde_json::value::RawValue as RawJsonValue;

use super::pdu::Pdu;

/// The `(type, state_key)` pairs whose current events a new event must cite as `auth_events`.
pub fn auth_event_keys(
    rules: &AuthorizationRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<(StateEventType, String)>, String> {
    state_res::auth_types_for_event(kind, sender, state_key, content, rules)
}

/// Check `event` by the room version's rules: first against the events it cites as
/// `auth_events` (state-independent rules), then against `state_before`, the room state the
/// event applies to. `Err` carries the rule that failed, fit to show to the sender.
pub fn check_event<'a>(
    rules: &AuthorizationRules,
    event: &Pdu,
    auth_event: impl Fn(&EventId) -> Option<&'a Pdu>,
    state_before: impl Fn(&StateEventType, &str) -> Option<&'a Pdu>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(rules, event, &auth_event)?;
    state_res::check_state_dependent_auth_rules(rules, event, &state_before)
}

/// The auth event IDs for an event, picked from a lookup of the current state.
pub fn select_auth_events<'a>(
    keys: &[(StateEventType, String)],
    current: impl Fn(&StateEventType, &str) -> Option<&'a OwnedEventId>,
) -> Vec<OwnedEventId> {
    keys.iter().filter_map(|(kind, key)| current(kind, key).cloned()).collect()
}

/// The authorization rules, rule by rule: for each, an event it allows and one it forbids,
/// in every supported room version (v1–v12). Rooms are built in memory with the real event
/// builder, so the events are exactly what the server would sign, in each version's format.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ruma::{
        MilliSecondsSinceUnixEpoch, OwnedEventId, RoomVersionId, UInt, UserId,
        room_version_rules::RoomVersionRules, server_name, signatures::Ed25519KeyPair,
    };
    use serde_json::{Value as JsonValue, json};

    use super::*;
    use crate::matrix::{
        pdu::{EventTemplate, GraphPosition, build_pdu, origin_picks_event_id},
        room_version::SUPPORTED,
    };

    const ALICE: &str = "@alice:example.org";
    const BOB: &str = "@bob:example.org";

    /// A room held in memory: its accepted events and current state.
    struct Room {
        rules: RoomVersionRules,
        key: Ed25519KeyPair,
        events: HashMap<OwnedEventId, Pdu>,
        state: HashMap<(StateEventType, String), OwnedEventId>,
        last: Option<OwnedEventId>,
        depth: u64,
        room_id: Option<ruma::OwnedRoomId>,
    }

    impl Room {
        /// A room created by Alice, who joined, set default power levels and `join_rule`.
        fn new(version: RoomVersionId, join_rule: &str) -> Self {
            Self::with_create(version, json!({}), join_rule)
        }

        /// As `new`, with extra fields in the create event's content.
        fn with_create(version: RoomVersionId, extra_create: JsonValue, join_rule: &str) -> Self {
            let rules = version.rules().unwrap();
            let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap();
            let mut room = Room {
                rules,
                key,
                events: HashMap::new(),
                state: HashMap::new(),
                last: None,
                depth: 0,
                room_id: None,
            };
            let mut create = json!({ "room_version": version });
            create.as_object_mut().unwrap().extend(extra_create.as_object().unwrap().clone());
            if !room.rules.authorization.use_room_create_sender {
                create["creator"] = json!(ALICE);
            }
            room.accept(ALICE, state("m.room.create", "", create)).unwrap();
            room.accept(ALICE, member(ALICE, "join")).unwrap();
            let levels = power_levels(&room, json!({}), json!({}));
            room.accept(ALICE, levels).unwrap();
            room.accept(ALICE, state("m.room.join_rules", "", json!({ "join_rule": join_rule }))).unwrap();
            room
        }

        fn build(&self, sender: &str, template: &EventTemplate) -> Pdu {
            let sender = UserId::parse(sender).unwrap();
            let content = serde_json::value::to_raw_value(&template.content).unwrap();
            let is_create = template.kind == TimelineEventType::RoomCreate;
            let auth_events = if is_create {
                vec![]
            } else {
                let keys = auth_event_keys(
                    &self.rules.authorization,
                    &template.kind,
                    &sender,
                    template.state_key.as_deref(),
                    &content,
                )
                .unwrap();
                select_auth_events(&keys, |k, s| self.state.get(&(k.clone(), s.to_owned())))
            };
            let chosen_room_id;
            let room_id = match (&self.room_id, is_create) {
                (Some(id), _) => Some(id.as_ref()),
                (None, true) if !self.rules.authorization.room_create_event_id_as_room_id => {
                    chosen_room_id = ruma::RoomId::new_v1(server_name!("example.org"));
                    Some(chosen_room_id.as_ref())
                }
                (None, _) => None,
            };
            let prev_events: Vec<OwnedEventId> = self.last.iter().cloned().collect();
            let picks_id = origin_picks_event_id(&self.rules);
            let reference_hashes = prev_events
                .iter()
                .chain(&auth_events)
                .filter(|_| picks_id)
                .map(|id| (id.clone(), self.events[id].reference_hash(&self.rules).unwrap()))
                .collect();
            build_pdu(
                &self.rules,
                server_name!("example.org"),
                &self.key,
                &sender,
                MilliSecondsSinceUnixEpoch(UInt::from(1_000u32)),
                template,
                GraphPosition {
                    room_id,
                    event_id: picks_id.then(|| ruma::EventId::new_v1(server_name!("example.org"))),
                    prev_events,
                    auth_events,
                    reference_hashes,
                    depth: UInt::new_saturating(self.depth + 1),
                },
            )
            .unwrap()
        }

        fn check(&self, pdu: &Pdu) -> Result<(), String> {
            check_event(
                &self.rules.authorization,
                pdu,
                |id| self.events.get(id),
                |k, s| self.state.get(&(k.clone(), s.to_owned())).and_then(|id| self.events.get(id)),
            )
        }

        /// Build, check and (if allowed) apply an event.
        fn accept(&mut self, sender: &str, template: EventTemplate) -> Result<(), String> {
            let pdu = self.build(sender, &template);
            self.check(&pdu)?;
            if self.room_id.is_none() {
                self.room_id = Some(pdu.room_id.clone());
            }
            if let Some(key) = &pdu.state_key {
                self.state.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
            }
            self.last = Some(pdu.event_id.clone());
            self.depth += 1;
            self.events.insert(pdu.event_id.clone(), pdu);
            Ok(())
        }
    }

    fn state(kind: &str, key: &str, content: JsonValue) -> EventTemplate {
        EventTemplate::state(kind, key, content)
    }

    fn member(user: &str, membership: &str) -> EventTemplate {
        state("m.room.member", user, json!({ "membership": membership }))
    }

    /// Power levels with `users`, plus Alice at 100 where the version lists creators.
    fn power_levels(room: &Room, mut users: JsonValue, extra: JsonValue) -> EventTemplate {
        if !room.rules.authorization.explicitly_privilege_room_creators {
            users[ALICE] = json!(100);
        }
        let mut content = json!({ "users": users });
        content.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        state("m.room.power_levels", "", content)
    }

    fn message() -> EventTemplate {
        EventTemplate::message("m.room.message", json!({ "msgtype": "m.text", "body": "hi" }))
    }

    /// The supported versions whose authorization rules pass `filter`.
    fn versions_where(filter: impl Fn(&AuthorizationRules) -> bool) -> Vec<RoomVersionId> {
        SUPPORTED.iter().filter(|v| filter(&v.rules().unwrap().authorization)).cloned().collect()
    }

    /// `setup` prepares a room; `allowed` must pass and `forbidden` must fail, in every version.
    fn check_rule(
        rule: &str,
        join_rule: &str,
        setup: impl Fn(&mut Room),
        allowed: impl Fn(&Room) -> (&'static str, EventTemplate),
        forbidden: impl Fn(&Room) -> (&'static str, EventTemplate),
    ) {
        check_rule_in(&SUPPORTED, rule, join_rule, setup, allowed, forbidden);
    }

    /// As `check_rule`, in the given versions only.
    fn check_rule_in(
        versions: &[RoomVersionId],
        rule: &str,
        join_rule: &str,
        setup: impl Fn(&mut Room),
        allowed: impl Fn(&Room) -> (&'static str, EventTemplate),
        forbidden: impl Fn(&Room) -> (&'static str, EventTemplate),
    ) {
        for version in versions {
            let mut room = Room::new(version.clone(), join_rule);
            setup(&mut room);
            let (sender, template) = allowed(&room);
            let pdu = room.build(sender, &template);
            assert_eq!(room.check(&pdu), Ok(()), "{rule} in v{version}: should allow");
            let (sender, template) = forbidden(&room);
            let pdu = room.build(sender, &template);
            assert!(room.check(&pdu).is_err(), "{rule} in v{version}: should forbid");
        }
    }

    #[test]
    fn only_members_send() {
        check_rule("sender must be joined", "public", |_| {}, |_| (ALICE, message()), |_| (BOB, message()));
    }

    #[test]
    fn join_rules_public_and_invite() {
        check_rule(
            "public join",
            "public",
            |_| {},
            |_| (BOB, member(BOB, "join")),
            |_| (BOB, member(ALICE, "join")),
        );
        check_rule(
            "invite-only join",
            "invite",
            |room| room.accept(ALICE, member(BOB, "invite")).unwrap(),
            |_| (BOB, member(BOB, "join")),
            |_| ("@carol:example.org", member("@carol:example.org", "join")),
        );
    }

    #[test]
    fn invites_need_power_and_membership() {
        check_rule(
            "invite power",
            "public",
            |room| {
                room.accept(BOB, member(BOB, "join")).unwrap();
                let levels = power_levels(room, json!({}), json!({ "invite": 50 }));
                room.accept(ALICE, levels).unwrap();
            },
            |_| (ALICE, member("@carol:example.org", "invite")),
            |_| (BOB, member("@carol:example.org", "invite")),
        );
    }

    #[test]
    fn bans_and_kicks_need_power() {
        let setup = |room: &mut Room| room.accept(BOB, member(BOB, "join")).unwrap();
        check_rule("ban", "public", setup, |_| (ALICE, member(BOB, "ban")), |_| (BOB, member(ALICE, "ban")));
        check_rule(
            "kick",
            "public",
            setup,
            |_| (ALICE, member(BOB, "leave")),
            |_| (BOB, member(ALICE, "leave")),
        );
        check_rule(
            "banned users cannot join",
            "public",
            |room| room.accept(ALICE, member(BOB, "ban")).unwrap(),
            |_| ("@carol:example.org", member("@carol:example.org", "join")),
            |_| (BOB, member(BOB, "join")),
        );
    }

    #[test]
    fn state_needs_state_default() {
        check_rule(
            "state_default",
            "public",
            |room| room.accept(BOB, member(BOB, "join")).unwrap(),
            |_| (ALICE, state("m.room.topic", "", json!({ "topic": "x" }))),
            |_| (BOB, state("m.room.topic", "", json!({ "topic": "x" }))),
        );
    }

    #[test]
    fn power_levels_cannot_exceed_the_senders_own() {
        // Bob (50) may change levels up to his own, not above.
        let pl_power = || json!({ "events": { "m.room.power_levels": 50 } });
        check_rule(
            "power level changes",
            "public",
            |room| {
                room.accept(BOB, member(BOB, "join")).unwrap();
                let levels = power_levels(room, json!({ BOB: 50 }), pl_power());
                room.accept(ALICE, levels).unwrap();
            },
            |room| (BOB, power_levels(room, json!({ BOB: 50, "@carol:example.org": 40 }), pl_power())),
            |room| (BOB, power_levels(room, json!({ BOB: 75 }), pl_power())),
        );
    }

    #[test]
    fn knocking_needs_a_knock_join_rule() {
        let knocking = versions_where(|rules| rules.knocking);
        assert_eq!(knocking.first(), Some(&RoomVersionId::V7));
        check_rule_in(
            &knocking,
            "knock",
            "knock",
            |_| {},
            |_| (BOB, member(BOB, "knock")),
            |_| (BOB, member(ALICE, "knock")),
        );
        // Versions 1–6 predate knocking: the join rule can be set, but nobody can knock.
        for version in versions_where(|rules| !rules.knocking) {
            let room = Room::new(version.clone(), "knock");
            assert!(room.check(&room.build(BOB, &member(BOB, "knock"))).is_err(), "v{version}");
        }
    }

    #[test]
    fn restricted_joins_need_an_authorising_member() {
        let allow = |room: &mut Room| {
            let content = json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": "!other:example.org" }],
            });
            room.accept(ALICE, state("m.room.join_rules", "", content)).unwrap();
        };
        let restricted = versions_where(|rules| rules.restricted_join_rule);
        assert_eq!(restricted.first(), Some(&RoomVersionId::V8));
        check_rule_in(
            &restricted,
            "restricted join",
            "public",
            allow,
            |_| {
                (
                    BOB,
                    state(
                        "m.room.member",
                        BOB,
                        json!({ "membership": "join", "join_authorised_via_users_server": ALICE }),
                    ),
                )
            },
            |_| (BOB, member(BOB, "join")),
        );
        // Before v8 a restricted room is joined by nobody, authorised or not.
        for version in versions_where(|rules| !rules.restricted_join_rule) {
            let mut room = Room::new(version.clone(), "public");
            allow(&mut room);
            let content = json!({ "membership": "join", "join_authorised_via_users_server": ALICE });
            let join = room.build(BOB, &state("m.room.member", BOB, content));
            assert!(room.check(&join).is_err(), "v{version}");
        }
    }

    #[test]
    fn unfederated_rooms_refuse_other_servers() {
        for version in SUPPORTED {
            let room = Room::with_create(version.clone(), json!({ "m.federate": false }), "public");
            assert_eq!(room.check(&room.build(BOB, &member(BOB, "join"))), Ok(()), "v{version}");
            let remote = "@mallory:evil.example";
            assert!(room.check(&room.build(remote, &member(remote, "join"))).is_err(), "v{version}");
        }
    }

    #[test]
    fn version_specific_rules() {
        // v1–v9 accept string power levels; v10+ require integers.
        for version in SUPPORTED {
            let room = Room::new(version.clone(), "public");
            let pdu = room.build(ALICE, &state("m.room.power_levels", "", json!({ "users_default": "0" })));
            let allowed = !room.rules.authorization.integer_power_levels;
            assert_eq!(room.check(&pdu).is_ok(), allowed, "string power level in v{version}");
        }
        // v1–v10 create events need `creator`; v11+ do not.
        for (version, needs_creator) in [
            (RoomVersionId::V1, true),
            (RoomVersionId::V3, true),
            (RoomVersionId::V10, true),
            (RoomVersionId::V11, false),
        ] {
            let room = Room::new(version.clone(), "public");
            let mut bare = Room {
                events: HashMap::new(),
                state: HashMap::new(),
                last: None,
                depth: 0,
                room_id: None,
                ..room
            };
            let result = bare.accept(ALICE, state("m.room.create", "", json!({ "room_version": version })));
            assert_eq!(result.is_err(), needs_creator, "create without creator in v{version}");
        }
        // v12: creators may not be listed in power levels, and hold power without it.
        let room = Room::new(RoomVersionId::V12, "public");
        let listed = room.build(ALICE, &state("m.room.power_levels", "", json!({ "users": { ALICE: 100 } })));
        assert!(room.check(&listed).is_err());
        let topic = room.build(ALICE, &state("m.room.topic", "", json!({ "topic": "creator power" })));
        assert_eq!(room.check(&topic), Ok(()));
        // v12 additional creators hold the same power; ordinary members do not.
        let mut room =
            Room::with_create(RoomVersionId::V12, json!({ "additional_creators": [BOB] }), "public");
        room.accept(BOB, member(BOB, "join")).unwrap();
        room.accept("@carol:example.org", member("@carol:example.org", "join")).unwrap();
        let topic =
            |sender| room.check(&room.build(sender, &state("m.room.topic", "", json!({ "topic": "t" }))));
        assert_eq!(topic(BOB), Ok(()));
        assert!(topic("@carol:example.org").is_err());
        // From v6, changing `notifications` levels needs the power to set them.
        for version in [RoomVersionId::V5, RoomVersionId::V6] {
            let mut room = Room::new(version.clone(), "public");
            room.accept(BOB, member(BOB, "join")).unwrap();
            let pl_power =
                json!({ "events": { "m.room.power_levels": 50 }, "notifications": { "room": 100 } });
            let levels = power_levels(&room, json!({ BOB: 50 }), pl_power);
            room.accept(ALICE, levels).unwrap();
            let lowered = json!({ "events": { "m.room.power_levels": 50 }, "notifications": { "room": 0 } });
            let pdu = room.build(BOB, &power_levels(&room, json!({ BOB: 50 }), lowered));
            let allowed = !room.rules.authorization.limit_notifications_power_levels;
            assert_eq!(room.check(&pdu).is_ok(), allowed, "notifications level in v{version}");
        }
        // A create event may not cite previous events.
        let room = Room::new(RoomVersionId::V11, "public");
        let create = room.build(ALICE, &state("m.room.create", "", json!({ "room_version": "11" })));
        assert!(room.check(&create).is_err(), "a create event after others has prev_events");
    }

    #[test]
    fn room_aliases_events_before_v6() {
        // v1–v5: an `m.room.aliases` event is allowed when its state key is the sender's
        // server, whatever the sender's power; from v6 it is an ordinary state event.
        let aliases = |key: &str| state("m.room.aliases", key, json!({ "aliases": ["#a:example.org"] }));
        for version in SUPPORTED {
            let mut room = Room::new(version.clone(), "public");
            room.accept(BOB, member(BOB, "join")).unwrap();
            let special = room.rules.authorization.special_case_room_aliases;
            assert_eq!(special, version_number(&version) <= 5, "v{version}");
            let own_server = room.check(&room.build(BOB, &aliases("example.org")));
            assert_eq!(own_server.is_ok(), special, "v{version}: Bob lacks state_default");
            assert!(room.check(&room.build(BOB, &aliases("elsewhere.org"))).is_err(), "v{version}");
            assert_eq!(
                room.check(&room.build(ALICE, &aliases("elsewhere.org"))).is_ok(),
                !special,
                "v{version}"
            );
        }
    }

    #[test]
    fn redactions_need_the_redact_level_in_v1_and_v2() {
        // v1–v2 authorize a redaction by the redact level, or when the redacted event's ID has
        // the redaction's server; from v3 the auth rules leave redactions to the server.
        let redaction = |target: &str| EventTemplate {
            kind: TimelineEventType::RoomRedaction,
            content: json!({}),
            state_key: None,
            redacts: Some(ruma::EventId::parse(target).unwrap()),
            origin_server_ts: None,
        };
        for version in SUPPORTED {
            let mut room = Room::new(version.clone(), "public");
            room.accept(BOB, member(BOB, "join")).unwrap();
            let special = room.rules.authorization.special_case_room_redaction;
            assert_eq!(special, version_number(&version) <= 2, "v{version}");
            // An event ID of another server: only the redact level allows it in v1–v2.
            let remote = "$remote:elsewhere.org";
            assert_eq!(room.check(&room.build(ALICE, &redaction(remote))), Ok(()), "v{version}");
            assert_eq!(room.check(&room.build(BOB, &redaction(remote))).is_ok(), !special, "v{version}");
            // An event of this server: the shared server allows it.
            let local = room.last.clone().unwrap();
            assert_eq!(room.check(&room.build(BOB, &redaction(local.as_str()))), Ok(()), "v{version}");
        }
    }

    fn version_number(version: &RoomVersionId) -> u32 {
        version.as_str().parse().unwrap()
    }
}
