//! State resolution: the room state before an event whose `prev_events` lead to different
//! states (forks of the room graph), as the resolution of those states.
//!
//! Rooms v2 to v11 use state resolution v2 (`/rooms/v2`), v12 uses v2.1 (`/rooms/v12`): the
//! first round of iterative auth checks starts from an empty map rather than the unconflicted
//! state, and the full conflicted set also holds the *conflicted state subgraph* (the events on
//! `auth_events` paths between two conflicted events), computed here. The algorithm itself is
//! ruma's (`state_res::resolve`); this module is the seam the room engine calls: it picks the
//! rules for the room version and gives ruma the events, the auth chains and the subgraph.
//! v1 rooms (state resolution v1, which ruma does not implement) are refused.

use std::collections::{HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId,
    room_version_rules::RoomVersionRules,
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::pdu::Pdu;

/// Why a set of states could not be resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// The room version resolves state with v1, which is not implemented.
    UnsupportedVersion,
    /// The forks and their auth chains do not pair up (one chain per fork).
    Mismatched,
    /// ruma's algorithm failed (an event it needed is missing, or malformed).
    Failed(String),
}

/// The resolution of `forks` (each the state after one `prev_event`) by the rules of the room
/// version. `auth_chains[i]` is the full auth chain of `forks[i]`: the union of the auth
/// chains of its state events (see [`auth_chain`]). `event` yields any event the forks, the
/// chains or their `auth_events` name; an event it does not know is not taken into account, as
/// the spec says of events a server cannot verify.
///
/// One fork, or forks that agree, resolve to themselves without looking at any event.
pub fn resolve<'a>(
    rules: &RoomVersionRules,
    forks: &[StateMap<OwnedEventId>],
    auth_chains: &[HashSet<OwnedEventId>],
    event: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> Result<StateMap<OwnedEventId>, ResolveError> {
    let v2 = rules.state_res.v2_rules().ok_or(ResolveError::UnsupportedVersion)?;
    if forks.len() != auth_chains.len() {
        return Err(ResolveError::Mismatched);
    }
    match forks {
        [] => return Ok(StateMap::new()),
        [only] => return Ok(only.clone()),
        [first, rest @ ..] if rest.iter().all(|f| f == first) => return Ok(first.clone()),
        _ => {}
    }
    let chains =
        auth_chains.iter().map(|c| c.iter().cloned().collect::<EventIdSet<OwnedEventId>>()).collect();
    state_res::resolve(
        &rules.authorization,
        v2,
        forks.iter(),
        chains,
        |id| event(id),
        |conflicted| {
            let ids: HashSet<&EventId> = conflicted.values().flatten().map(|id| &**id).collect();
            Some(conflicted_state_subgraph(&ids, |id| event(id)).into_iter().collect())
        },
    )
    .map_err(|e| ResolveError::Failed(e.to_string()))
}

/// The auth chain of a set of events: every event reachable from their `auth_events`,
/// recursively (the events themselves not included unless one authorizes another). Events
/// `event` does not know end the walk there.
pub fn auth_chain<'a, 'b>(
    starts: impl IntoIterator<Item = &'b EventId>,
    event: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> HashSet<OwnedEventId> {
    let mut chain = HashSet::new();
    let mut todo: Vec<OwnedEventId> =
        starts.into_iter().filter_map(&event).flat_map(|pdu| pdu.auth_events.iter().cloned()).collect();
    while let Some(id) = todo.pop() {
        if chain.contains(&id) {
            continue;
        }
        if let Some(pdu) = event(&id) {
            todo.extend(pdu.auth_events.iter().filter(|a| !chain.contains(*a)).cloned());
        }
        chain.insert(id);
    }
    chain
}

/// The conflicted state subgraph (v2.1): the events on some `auth_events` path from one
/// conflicted event to another, endpoints included. Found as the events reachable from a
/// conflicted event (by `auth_events`) from which a conflicted event is reachable, each
/// event visited once.
pub fn conflicted_state_subgraph<'a>(
    conflicted: &HashSet<&EventId>,
    event: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> HashSet<OwnedEventId> {
    // Whether each visited event reaches a conflicted event (itself excluded); filled in
    // post-order by an explicit stack, so a deep chain cannot overflow the call stack.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    let mut subgraph = HashSet::new();
    for start in conflicted {
        let mut stack: Vec<(OwnedEventId, bool)> = vec![((*start).to_owned(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(&id) && !expanded {
                continue;
            }
            let auth: &[OwnedEventId] = event(&id).map(|p| p.auth_events.as_slice()).unwrap_or(&[]);
            if expanded {
                let hit = auth.iter().any(|a| conflicted.contains(&**a) || reaches.get(a) == Some(&true));
                reaches.insert(id, hit);
            } else {
                reaches.insert(id.clone(), false);
                stack.push((id, true));
                stack.extend(auth.iter().filter(|a| !reaches.contains_key(*a)).map(|a| (a.clone(), false)));
            }
        }
    }
    // Every visited event was reached from a conflicted one; keep those on a path onward.
    for (id, hit) in &reaches {
        if *hit || conflicted.contains(&**id) {
            subgraph.insert(id.clone());
        }
    }
    subgraph
}

/// Hand-built forks in v10, v11 (state resolution v2) and v12 (v2.1). Every event is built and
/// signed as the server would, on the fork it names, and passes the authorization rules
/// against that fork's state; the expected outcomes are worked out from the spec's algorithm
/// in each test's comment.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ruma::{
        MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomVersionId, UInt, UserId,
        events::{StateEventType, TimelineEventType},
        server_name,
        signatures::Ed25519KeyPair,
    };
    use serde_json::{Value as JsonValue, json};

    use super::*;
    use crate::matrix::{
        auth::{auth_event_keys, check_event, select_auth_events},
        pdu::{EventTemplate, GraphPosition, build_pdu},
    };

    const ALICE: &str = "@alice:example.org";
    const BOB: &str = "@bob:example.org";
    const CAROL: &str = "@carol:example.org";
    const DAVE: &str = "@dave:example.org";
    const VERSIONS: [RoomVersionId; 3] = [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

    /// The end of a fork: its last event, the state after it, its depth.
    #[derive(Clone)]
    struct Tip {
        id: OwnedEventId,
        state: StateMap<OwnedEventId>,
        depth: u64,
    }

    /// Every event of one room, whichever fork it is on.
    struct Graph {
        rules: RoomVersionRules,
        key: Ed25519KeyPair,
        room_id: Option<OwnedRoomId>,
        events: HashMap<OwnedEventId, Pdu>,
    }

    impl Graph {
        /// A room created by Alice (who joined), with power levels giving `users` (plus Alice
        /// at 100 where the version lists creators in `users`), a public join rule, and Bob
        /// and Carol joined. Returns the graph and its (single) tip.
        fn new(version: &RoomVersionId, users: JsonValue) -> (Self, Tip) {
            let rules = version.rules().unwrap();
            let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap();
            let mut graph = Graph { rules, key, room_id: None, events: HashMap::new() };
            let empty =
                Tip { id: OwnedEventId::try_from("$none").unwrap(), state: StateMap::new(), depth: 0 };
            let mut create = json!({ "room_version": version });
            if !graph.rules.authorization.use_room_create_sender {
                create["creator"] = json!(ALICE);
            }
            let tip = graph.send(&empty, ALICE, state("m.room.create", "", create), 100).unwrap();
            let tip = graph.send(&tip, ALICE, member(ALICE, "join"), 101).unwrap();
            let levels = graph.levels(users, json!({}));
            let tip = graph.send(&tip, ALICE, levels, 102).unwrap();
            let tip = graph
                .send(&tip, ALICE, state("m.room.join_rules", "", json!({ "join_rule": "public" })), 103)
                .unwrap();
            let tip = graph.send(&tip, BOB, member(BOB, "join"), 104).unwrap();
            let tip = graph.send(&tip, CAROL, member(CAROL, "join"), 105).unwrap();
            (graph, tip)
        }

        /// A power levels event with `users` (and Alice at 100 unless she is a privileged
        /// creator) and `extra` fields.
        fn levels(&self, mut users: JsonValue, extra: JsonValue) -> EventTemplate {
            if !self.rules.authorization.explicitly_privilege_room_creators {
                users[ALICE] = json!(100);
            }
            let mut content = json!({ "users": users });
            content.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            state("m.room.power_levels", "", content)
        }

        /// Build an event on the fork ending at `at`, check it against that fork's state, and
        /// return the fork's new tip.
        fn send(&mut self, at: &Tip, sender: &str, template: EventTemplate, ts: u32) -> Result<Tip, String> {
            let sender = UserId::parse(sender).unwrap();
            let content = serde_json::value::to_raw_value(&template.content).unwrap();
            let is_create = template.kind == TimelineEventType::RoomCreate;
            let (auth_events, prev_events) = if is_create {
                (vec![], vec![])
            } else {
                let keys = auth_event_keys(
                    &self.rules.authorization,
                    &template.kind,
                    &sender,
                    template.state_key.as_deref(),
                    &content,
                )
                .unwrap();
                (
                    select_auth_events(&keys, |k, s| at.state.get(&(k.clone(), s.to_owned()))),
                    vec![at.id.clone()],
                )
            };
            let chosen;
            let room_id = match (&self.room_id, is_create) {
                (Some(id), _) => Some(id.as_ref()),
                (None, true) if !self.rules.authorization.room_create_event_id_as_room_id => {
                    chosen = ruma::RoomId::new_v1(server_name!("example.org"));
                    Some(chosen.as_ref())
                }
                (None, _) => None,
            };
            let pdu = build_pdu(
                &self.rules,
                server_name!("example.org"),
                &self.key,
                &sender,
                MilliSecondsSinceUnixEpoch(UInt::from(ts)),
                &template,
                GraphPosition {
                    room_id,
                    event_id: None,
                    prev_events,
                    auth_events,
                    reference_hashes: Default::default(),
                    depth: UInt::new_saturating(at.depth + 1),
                },
            )
            .unwrap();
            check_event(
                &self.rules.authorization,
                &pdu,
                |id| self.events.get(id),
                |k, s| at.state.get(&(k.clone(), s.to_owned())).and_then(|id| self.events.get(id)),
            )?;
            self.room_id.get_or_insert_with(|| pdu.room_id.clone());
            let mut state = at.state.clone();
            if let Some(key) = &pdu.state_key {
                state.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
            }
            let tip = Tip { id: pdu.event_id.clone(), state, depth: at.depth + 1 };
            self.events.insert(pdu.event_id.clone(), pdu);
            Ok(tip)
        }

        /// The resolution of the tips' states, with each fork's full auth chain.
        fn resolve(&self, tips: &[&Tip]) -> StateMap<OwnedEventId> {
            let forks: Vec<_> = tips.iter().map(|t| t.state.clone()).collect();
            let chains: Vec<_> = forks
                .iter()
                .map(|f| auth_chain(f.values().map(|id| &**id), |id| self.events.get(id)))
                .collect();
            let resolved = resolve(&self.rules, &forks, &chains, |id| self.events.get(id)).unwrap();
            // The order of the forks does not matter.
            let mut reversed = forks.clone();
            reversed.reverse();
            let mut chains_reversed = chains.clone();
            chains_reversed.reverse();
            assert_eq!(
                resolve(&self.rules, &reversed, &chains_reversed, |id| self.events.get(id)).unwrap(),
                resolved
            );
            resolved
        }
    }

    fn state(kind: &str, key: &str, content: JsonValue) -> EventTemplate {
        EventTemplate::state(kind, key, content)
    }

    fn member(user: &str, membership: &str) -> EventTemplate {
        state("m.room.member", user, json!({ "membership": membership }))
    }

    fn key(kind: &str, state_key: &str) -> (StateEventType, String) {
        (kind.into(), state_key.to_owned())
    }

    /// The room named under its first power levels, which then give Bob 50; on one fork
    /// Alice renames the room, on the other Bob sets a topic. Neither is a power event and
    /// nothing else differs: the rename and the topic both stand, whichever came first. In
    /// v10 and v11 the rename wins by the mainline of the (unconflicted) power levels; in
    /// v12 the mainline comes from the conflicted power events alone, none here, so the
    /// rename wins by being later than the first name (with equal timestamps the event IDs
    /// would decide). (A partition between two servers in `it::federation_partition`.)
    #[test]
    fn a_rename_on_one_fork_and_a_topic_on_the_other_both_stand() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({}));
            let named =
                g.send(&base, ALICE, state("m.room.name", "", json!({ "name": "old" })), 106).unwrap();
            let promoted = g.levels(json!({ BOB: 50 }), json!({}));
            let base = g.send(&named, ALICE, promoted, 107).unwrap();
            for (rename_at, topic_at) in [(2000, 1500), (1500, 2000)] {
                let rename = state("m.room.name", "", json!({ "name": "new" }));
                let a = g.send(&base, ALICE, rename, rename_at).unwrap();
                let b =
                    g.send(&base, BOB, state("m.room.topic", "", json!({ "topic": "t" })), topic_at).unwrap();
                let resolved = g.resolve(&[&a, &b]);
                assert_eq!(resolved[&key("m.room.name", "")], a.id, "{version} {rename_at} {topic_at}");
                assert_eq!(resolved[&key("m.room.topic", "")], b.id, "{version} {rename_at} {topic_at}");
            }
        }
    }

    /// Bob (50, enough to ban) bans Carol while, on another fork, Alice demotes Bob to 0.
    /// Both are power events; Alice's sorts first (greater power), so the iterative auth
    /// checks apply the demotion and then check Bob's ban against the partially resolved
    /// power levels, where Bob has 0: the ban is rejected and Carol's join stays.
    #[test]
    fn power_level_change_racing_a_ban() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({ BOB: 50 }));
            let demote = g.levels(json!({ BOB: 0 }), json!({}));
            let a = g.send(&base, ALICE, demote, 2000).unwrap();
            let b = g.send(&base, BOB, member(CAROL, "ban"), 1500).unwrap();
            let resolved = g.resolve(&[&a, &b]);
            assert_eq!(resolved[&key("m.room.power_levels", "")], a.id, "{version}");
            assert_eq!(
                resolved[&key("m.room.member", CAROL)],
                base.state[&key("m.room.member", CAROL)],
                "{version}"
            );
            assert_eq!(resolved.len(), base.state.len(), "{version}");
        }
    }

    /// Alice bans Dave while, on another fork, Dave joins the public room. The ban is a power
    /// event and is applied first; Dave's join (a mainline event) is then checked against a
    /// state where Dave is banned and rejected: Dave stays banned.
    #[test]
    fn ban_racing_a_join() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({}));
            let a = g.send(&base, ALICE, member(DAVE, "ban"), 2000).unwrap();
            let b = g.send(&base, DAVE, member(DAVE, "join"), 1000).unwrap();
            let resolved = g.resolve(&[&a, &b]);
            assert_eq!(resolved[&key("m.room.member", DAVE)], a.id, "{version}");
            let ban = &g.events[&a.id];
            assert_eq!(ban.content_value()["membership"], "ban");
        }
    }

    /// Alice makes the room invite-only while, on another fork, Dave joins it as a public room.
    /// The join rule is a power event, applied first; Dave's join is then checked against the
    /// invite-only rule and rejected, so Dave has no member event in the resolved state.
    #[test]
    fn join_rule_change_racing_a_join() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({}));
            let invite_only = state("m.room.join_rules", "", json!({ "join_rule": "invite" }));
            let a = g.send(&base, ALICE, invite_only, 2000).unwrap();
            let b = g.send(&base, DAVE, member(DAVE, "join"), 1000).unwrap();
            let resolved = g.resolve(&[&a, &b]);
            assert_eq!(resolved[&key("m.room.join_rules", "")], a.id, "{version}");
            assert!(!resolved.contains_key(&key("m.room.member", DAVE)), "{version}");
            assert_eq!(resolved.len(), base.state.len(), "{version}");
        }
    }

    /// Alice (the creator) and Bob (100) each change `state_default` on their own fork, Bob's
    /// change first in time. Both changes pass against either state, so the one applied last
    /// wins. In v10 and v11 both senders have power 100, so the reverse topological power
    /// ordering falls back to `origin_server_ts`: Bob's (earlier) is applied first and Alice's
    /// wins. In v12 the creator's power is infinite: Alice's sorts first and Bob's wins.
    #[test]
    fn creator_power_orders_racing_power_levels_from_v12() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({ BOB: 100 }));
            let alice_levels = g.levels(json!({ BOB: 100 }), json!({ "state_default": 60 }));
            let bob_levels = g.levels(json!({ BOB: 100 }), json!({ "state_default": 70 }));
            let a = g.send(&base, ALICE, alice_levels, 2000).unwrap();
            let b = g.send(&base, BOB, bob_levels, 1500).unwrap();
            let resolved = g.resolve(&[&a, &b]);
            let winner = if *version == RoomVersionId::V12 { &b.id } else { &a.id };
            assert_eq!(&resolved[&key("m.room.power_levels", "")], winner, "{version}");
        }
    }

    /// The v2.1 change (room version 12): the first round of iterative auth checks starts
    /// from an empty state map instead of the unconflicted state. Bob (50, enough to ban) bans
    /// Carol (B), and on the same fork Alice then demotes Bob to 0 (PL2). The other fork holds
    /// PL2 with Carol still joined (J), as a server that got PL2 but not the ban would. PL2 is
    /// in both forks, so it is unconflicted; only Carol's membership conflicts, B against J.
    /// The full conflicted set is {B, J} (J is in B's auth chain, as B's target membership, and
    /// in no auth chain of the other fork). B is a power event (a ban of another user), and J
    /// joins it in step 1 as an event of B's auth chain in the full conflicted set; the reverse
    /// topological power ordering puts J first (B cites it).
    /// - v10, v11 (state resolution v2): the checks start from the unconflicted state, which
    ///   holds PL2. J passes (the room is public); B is checked with PL2, where Bob has 0, less
    ///   than the ban level 50: rejected. Carol stays joined.
    /// - v12 (v2.1): the checks start empty. J passes against its own auth events; B is checked
    ///   against J (from the partial state) and, for the power levels, against its own auth
    ///   events, where Bob has 50: it passes and replaces J. The final step adds the
    ///   unconflicted state (PL2) back: Carol is banned, and Bob is demoted after the fact.
    #[test]
    fn v12_starts_the_first_auth_checks_from_an_empty_state() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({ BOB: 50 }));
            let ban = g.send(&base, BOB, member(CAROL, "ban"), 2000).unwrap();
            let demote = g.levels(json!({ BOB: 0 }), json!({}));
            let a = g.send(&ban, ALICE, demote, 2001).unwrap();
            let mut b = base.clone();
            b.state.insert(key("m.room.power_levels", ""), a.id.clone());
            let resolved = g.resolve(&[&a, &b]);
            assert_eq!(resolved[&key("m.room.power_levels", "")], a.id, "{version}");
            let carol = &resolved[&key("m.room.member", CAROL)];
            let expected = if *version == RoomVersionId::V12 {
                &ban.id
            } else {
                &base.state[&key("m.room.member", CAROL)]
            };
            assert_eq!(carol, expected, "{version}");
            assert_eq!(resolved.len(), base.state.len(), "{version}");
        }
    }

    /// Two power level changes racing, each allowed on its own fork: Alice (100; infinite as
    /// creator in v12) raises Carol to 50, while Bob (50) raises `events_default` from 0 to
    /// 10. Both are power events; the reverse topological power ordering puts the sender of
    /// greater power (read from the power levels among each event's auth events) first, so
    /// Alice's is applied first and Bob's is then checked against it: Bob's event, made
    /// without Carol's entry, would lower Carol from 50 to 0, and a user at the sender's own
    /// level may not be changed by him. Bob's is rejected; Alice's wins in every version.
    #[test]
    fn power_level_changes_racing() {
        for version in &VERSIONS {
            let (mut g, base) = Graph::new(version, json!({ BOB: 50 }));
            let raise = g.levels(json!({ BOB: 50, CAROL: 50 }), json!({}));
            let a = g.send(&base, ALICE, raise, 2000).unwrap();
            let lower = g.levels(json!({ BOB: 50 }), json!({ "events_default": 10 }));
            let b = g.send(&base, BOB, lower, 1000).unwrap();
            let resolved = g.resolve(&[&a, &b]);
            assert_eq!(resolved[&key("m.room.power_levels", "")], a.id, "{version}");
        }
    }

    /// A chain of power levels PL1 → PL2 → PL3 (each citing the one before as an auth event):
    /// with PL1 and PL3 conflicted, the subgraph is the path between them, PL2 included, and
    /// nothing off that path (the create event, Alice's join).
    #[test]
    fn conflicted_state_subgraph_is_the_paths_between_conflicted_events() {
        let (mut g, base) = Graph::new(&RoomVersionId::V12, json!({}));
        let pl1 = base.state[&key("m.room.power_levels", "")].clone();
        let levels = g.levels(json!({ BOB: 10 }), json!({}));
        let t2 = g.send(&base, ALICE, levels, 2000).unwrap();
        let levels = g.levels(json!({ BOB: 20 }), json!({}));
        let t3 = g.send(&t2, ALICE, levels, 2001).unwrap();
        let conflicted: HashSet<&EventId> = [&*pl1, &*t3.id].into_iter().collect();
        let subgraph = conflicted_state_subgraph(&conflicted, |id| g.events.get(id));
        let expected: HashSet<OwnedEventId> = [pl1, t2.id, t3.id].into_iter().collect();
        assert_eq!(subgraph, expected);
    }

    /// Forks that agree, or a single fork, resolve to themselves; a v1 room is refused rather
    /// than resolved with the wrong algorithm; chains must pair with forks.
    #[test]
    fn trivial_inputs_and_refusals() {
        let (mut g, base) = Graph::new(&RoomVersionId::V11, json!({}));
        let none = |_: &EventId| None::<&Pdu>;
        assert_eq!(
            resolve(&g.rules, std::slice::from_ref(&base.state), &[HashSet::new()], none).unwrap(),
            base.state
        );
        let same = [base.state.clone(), base.state.clone()];
        assert_eq!(resolve(&g.rules, &same, &[HashSet::new(), HashSet::new()], none).unwrap(), base.state);
        assert_eq!(resolve(&g.rules, &same, &[HashSet::new()], none), Err(ResolveError::Mismatched));
        let v1 = RoomVersionId::V1.rules().unwrap();
        assert_eq!(
            resolve(&v1, &same, &[HashSet::new(), HashSet::new()], none),
            Err(ResolveError::UnsupportedVersion)
        );
        // Differing forks whose events are unknown cannot be resolved into anything invented.
        let a = g.send(&base, DAVE, member(DAVE, "join"), 2000).unwrap();
        let resolved = resolve(
            &g.rules,
            &[base.state.clone(), a.state.clone()],
            &[HashSet::new(), HashSet::new()],
            none,
        );
        assert!(resolved.is_err() || !resolved.unwrap().contains_key(&key("m.room.member", DAVE)));
    }
}
