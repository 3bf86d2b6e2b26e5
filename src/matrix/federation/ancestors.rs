//! The walk back over an incoming event's missing `prev_events`, bounded.
//!
//! An event from a remote server may cite ancestors this server has not seen. They are fetched
//! (`get_missing_events`, `/event`) and checked before it, oldest first. A peer can cite a chain
//! of any length, or a graph of any width, so the walk is bounded twice: by the number of events
//! it fetches ([`WalkLimits::max_events`]) and by the distance from the new event
//! ([`WalkLimits::max_hops`]). Where it stops, the ancestors it did not fetch are reported as
//! [`Walk::gaps`]: the caller then asks for the state at the oldest fetched events
//! (`/state_ids`) rather than walking further, which is what the spec's "Retrieving missing
//! events" and Synapse's limited `get_missing_events` amount to.
//!
//! The walk is a state machine so the caller may fetch asynchronously: [`AncestorWalk::next_wanted`]
//! names the next event to fetch, [`AncestorWalk::received`] takes the answer (an event the
//! caller already parsed and checked with [`super::format::parse_pdu`], or `None`), and
//! [`AncestorWalk::finish`] gives the result. Events from a batch answer (`get_missing_events`
//! returns several) are kept by the caller and handed in as they are named. [`walk`] runs the
//! whole machine over a synchronous closure. Iterative throughout: no recursion on the graph.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque},
};

use ruma::{EventId, OwnedEventId, OwnedRoomId};

use crate::matrix::pdu::Pdu;

/// How far one walk may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// The most events fetched in one walk.
    pub max_events: usize,
    /// The most `prev_events` steps from the new event (its own `prev_events` are 1 step away).
    pub max_hops: usize,
}

impl Default for WalkLimits {
    /// 100 events, 50 steps back: a server that was away briefly catches up by walking; a
    /// longer gap is filled by asking for the state instead (Synapse walks 10 events).
    fn default() -> Self {
        Self { max_events: 100, max_hops: 50 }
    }
}

/// Why an event handed to the walk was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The event answering for an ID is another event (its hash gives another ID).
    WrongEvent,
    /// The event is in another room.
    OtherRoom,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The fetched ancestors, parents before children (then by depth and ID), to be checked
    /// and stored in this order before the new event.
    pub fetched: Vec<Pdu>,
    /// Ancestors left unfetched because a limit was reached: the state before them must be
    /// asked for (`/state_ids`) instead.
    pub gaps: BTreeSet<OwnedEventId>,
    /// Ancestors the peer could not give.
    pub unavailable: BTreeSet<OwnedEventId>,
    /// Events handed in that were not the one asked for, or not of this room.
    pub refused: Vec<(OwnedEventId, Refusal)>,
}

/// A walk in progress (see the module's comment).
#[derive(Debug)]
pub struct AncestorWalk {
    room_id: OwnedRoomId,
    limits: WalkLimits,
    /// Events to fetch, each with its distance from the new event, breadth first.
    queue: VecDeque<(OwnedEventId, usize)>,
    /// Every ID ever queued, so each is fetched once however many events cite it.
    seen: HashSet<OwnedEventId>,
    /// The event asked for and not answered yet, with its distance.
    asked: Option<(OwnedEventId, usize)>,
    fetched: Vec<Pdu>,
    walk: Walk,
}

impl AncestorWalk {
    /// Start from `event`: its `prev_events` that `is_known` does not know are to be fetched.
    pub fn new(event: &Pdu, limits: WalkLimits, is_known: impl Fn(&EventId) -> bool) -> Self {
        let mut walk = Self {
            room_id: event.room_id.clone(),
            limits,
            queue: VecDeque::new(),
            seen: HashSet::from([event.event_id.clone()]),
            asked: None,
            fetched: Vec::new(),
            walk: Walk::default(),
        };
        walk.enqueue(&event.prev_events, 1, &is_known);
        walk
    }

    fn enqueue(&mut self, ids: &[OwnedEventId], hops: usize, is_known: &impl Fn(&EventId) -> bool) {
        for id in ids {
            if !self.seen.contains(id) && !is_known(id) {
                self.seen.insert(id.clone());
                self.queue.push_back((id.clone(), hops));
            }
        }
    }

    /// The next event to fetch, or `None` when the walk is over. An event still unanswered is
    /// named again.
    pub fn next_wanted(&mut self) -> Option<OwnedEventId> {
        if let Some((id, _)) = &self.asked {
            return Some(id.clone());
        }
        while let Some((id, hops)) = self.queue.pop_front() {
            if self.fetched.len() >= self.limits.max_events || hops > self.limits.max_hops {
                self.walk.gaps.insert(id);
                continue;
            }
            self.asked = Some((id.clone(), hops));
            return Some(id);
        }
        None
    }

    /// The answer for the event last named by [`Self::next_wanted`]: the event, or `None` if
    /// the peer could not give it. `is_known` tells which of its `prev_events` this server has.
    pub fn received(&mut self, event: Option<Pdu>, is_known: impl Fn(&EventId) -> bool) {
        let Some((id, hops)) = self.asked.take() else { return };
        let Some(event) = event else {
            self.walk.unavailable.insert(id);
            return;
        };
        let refusal = if event.event_id != id {
            Some(Refusal::WrongEvent)
        } else if event.room_id != self.room_id {
            Some(Refusal::OtherRoom)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.walk.refused.push((event.event_id, refusal));
            self.walk.unavailable.insert(id);
            return;
        }
        self.enqueue(&event.prev_events, hops + 1, &is_known);
        self.fetched.push(event);
    }

    /// The result: the fetched events parents first, and what was left out.
    pub fn finish(mut self) -> Walk {
        if let Some((id, _)) = self.asked.take() {
            self.walk.unavailable.insert(id);
        }
        self.walk.gaps.extend(self.queue.into_iter().map(|(id, _)| id));
        self.walk.fetched = parents_first(self.fetched);
        self.walk
    }
}

/// Run a walk from `event`, fetching with `fetch`.
pub fn walk(
    event: &Pdu,
    limits: WalkLimits,
    is_known: impl Fn(&EventId) -> bool,
    mut fetch: impl FnMut(&EventId) -> Option<Pdu>,
) -> Walk {
    let mut walk = AncestorWalk::new(event, limits, &is_known);
    while let Some(id) = walk.next_wanted() {
        let answer = fetch(&id);
        walk.received(answer, &is_known);
    }
    walk.finish()
}

/// `events` ordered so that each comes after those of them it cites as `prev_events` (Kahn's
/// algorithm; among the ready, lowest depth, then ID, first). Events in a cycle, which hashes
/// make impossible but a peer can claim, come last in depth order.
fn parents_first(events: Vec<Pdu>) -> Vec<Pdu> {
    let index: HashMap<OwnedEventId, usize> =
        events.iter().enumerate().map(|(i, e)| (e.event_id.clone(), i)).collect();
    let mut waiting_on = vec![0usize; events.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    for (i, event) in events.iter().enumerate() {
        let parents: HashSet<usize> =
            event.prev_events.iter().filter_map(|p| index.get(p).copied()).collect();
        waiting_on[i] = parents.len();
        for parent in parents {
            children[parent].push(i);
        }
    }
    let key = |i: usize| Reverse((u64::from(events[i].depth), events[i].event_id.clone(), i));
    let mut ready: BinaryHeap<_> = (0..events.len()).filter(|&i| waiting_on[i] == 0).map(key).collect();
    let mut order = Vec::with_capacity(events.len());
    let mut placed = vec![false; events.len()];
    while let Some(Reverse((_, _, i))) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &child in &children[i] {
            waiting_on[child] -= 1;
            if waiting_on[child] == 0 {
                ready.push(key(child));
            }
        }
    }
    let mut rest: Vec<usize> = (0..events.len()).filter(|&i| !placed[i]).collect();
    rest.sort_by_key(|&i| (u64::from(events[i].depth), events[i].event_id.clone()));
    order.extend(rest);
    let mut slots: Vec<Option<Pdu>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;

    const ROOM: &str = "!room:example.org";

    fn id(n: usize) -> OwnedEventId {
        EventId::parse(format!("${n:0>43}")).unwrap()
    }

    /// An unsigned event `n` of `room` citing `prev` (the walk looks at IDs, rooms and
    /// `prev_events` only).
    fn event_in(room: &str, n: usize, prev: &[usize], depth: usize) -> Pdu {
        serde_json::from_value(json!({
            "event_id": id(n),
            "room_id": room,
            "sender": "@mallory:evil.example",
            "origin_server_ts": 1,
            "type": "m.room.message",
            "content": {},
            "prev_events": prev.iter().map(|&p| id(p)).collect::<Vec<_>>(),
            "auth_events": [],
            "depth": depth,
        }))
        .unwrap()
    }

    fn event(n: usize, prev: &[usize], depth: usize) -> Pdu {
        event_in(ROOM, n, prev, depth)
    }

    /// A chain 0 ← 1 ← … ← `len`, event 0 known, the peer serving the rest.
    fn chain(len: usize) -> HashMap<OwnedEventId, Pdu> {
        (1..=len).map(|n| (id(n), event(n, &[n - 1], n))).collect()
    }

    fn is(event: &EventId, n: usize) -> bool {
        event.as_str() == id(n).as_str()
    }

    fn ids(events: &[Pdu]) -> Vec<OwnedEventId> {
        events.iter().map(|e| e.event_id.clone()).collect()
    }

    /// The "bogus prev_events chains 10,000 deep": the walk fetches at most
    /// `max_events`, reports where it stopped, and never reaches the bottom.
    #[test]
    fn a_chain_10000_deep_is_bounded() {
        let peer = chain(10_000);
        let new = event(10_001, &[10_000], 10_001);
        let calls = Cell::new(0);
        let known = |id: &EventId| is(id, 0);
        let result = walk(&new, WalkLimits::default(), known, |id| {
            calls.set(calls.get() + 1);
            peer.get(id).cloned()
        });
        assert_eq!(calls.get(), 50, "the hop limit (50) is reached before the event limit (100)");
        assert_eq!(result.fetched.len(), 50);
        assert_eq!(result.gaps, BTreeSet::from([id(9_950)]));
        assert!(result.unavailable.is_empty() && result.refused.is_empty());
        // Oldest first.
        assert_eq!(ids(&result.fetched), (9_951..=10_000).map(id).collect::<Vec<_>>());

        let limits = WalkLimits { max_events: 30, max_hops: 1_000 };
        let result = walk(&new, limits, known, |id| peer.get(id).cloned());
        assert_eq!(result.fetched.len(), 30);
        assert_eq!(result.gaps, BTreeSet::from([id(9_970)]));
    }

    /// With limits that allow it, the whole 10,000-deep chain is walked down to the known
    /// event, without recursion and in order.
    #[test]
    fn a_chain_10000_deep_is_walked_whole_when_allowed() {
        let peer = chain(10_000);
        let new = event(10_001, &[10_000], 10_001);
        let limits = WalkLimits { max_events: 20_000, max_hops: 20_000 };
        let result = walk(&new, limits, |id| is(id, 0), |id| peer.get(id).cloned());
        assert_eq!(ids(&result.fetched), (1..=10_000).map(id).collect::<Vec<_>>());
        assert!(result.gaps.is_empty());
    }

    /// A fan: the new event cites 20 unknown events, each citing 20 more. Each is fetched once,
    /// and the event limit caps the total.
    #[test]
    fn a_wide_graph_is_capped_by_the_event_limit() {
        let mut peer = HashMap::new();
        let roots: Vec<usize> = (1..=20).collect();
        for &r in &roots {
            let below: Vec<usize> = (0..20).map(|k| 1000 + r * 20 + k).collect();
            peer.insert(id(r), event(r, &below, 3));
            for &b in &below {
                peer.insert(id(b), event(b, &[0], 2));
            }
        }
        let new = event(5000, &roots, 4);
        let calls = Cell::new(0);
        let result = walk(
            &new,
            WalkLimits::default(),
            |id| is(id, 0),
            |id| {
                calls.set(calls.get() + 1);
                peer.get(id).cloned()
            },
        );
        assert_eq!(calls.get(), 100);
        assert_eq!(result.fetched.len(), 100);
        assert_eq!(result.gaps.len(), 400 - 80, "the 20 roots and 80 below were fetched");
        let unique: HashSet<_> = ids(&result.fetched).into_iter().collect();
        assert_eq!(unique.len(), 100);
    }

    /// A diamond and a claimed cycle: each event fetched once, parents first.
    #[test]
    fn shared_ancestors_are_fetched_once_and_cycles_end() {
        let peer: HashMap<_, _> = [
            (id(1), event(1, &[0], 1)),
            (id(2), event(2, &[1], 2)),
            (id(3), event(3, &[1], 2)),
            (id(4), event(4, &[2, 3], 3)),
        ]
        .into();
        let new = event(5, &[4, 2], 4);
        let calls = Cell::new(0);
        let result = walk(
            &new,
            WalkLimits::default(),
            |id| is(id, 0),
            |id| {
                calls.set(calls.get() + 1);
                peer.get(id).cloned()
            },
        );
        assert_eq!(calls.get(), 4);
        assert_eq!(ids(&result.fetched), vec![id(1), id(2), id(3), id(4)]);

        // 6 and 7 cite each other; the new event cites 6.
        let peer: HashMap<_, _> = [(id(6), event(6, &[7], 2)), (id(7), event(7, &[6], 1))].into();
        let result = walk(&event(8, &[6], 3), WalkLimits::default(), |_| false, |id| peer.get(id).cloned());
        assert_eq!(ids(&result.fetched), vec![id(7), id(6)], "a cycle ends, in depth order");
    }

    /// What the peer gets wrong is reported, not taken: a missing event, an event other than
    /// the one asked for, an event of another room.
    #[test]
    fn bad_answers_are_refused() {
        let new = event(10, &[1, 2, 3], 5);
        let result = walk(
            &new,
            WalkLimits::default(),
            |_| false,
            |asked| {
                if is(asked, 1) {
                    None
                } else if is(asked, 2) {
                    Some(event(99, &[], 1))
                } else {
                    Some(event_in("!other:example.org", 3, &[], 1))
                }
            },
        );
        assert!(result.fetched.is_empty());
        assert_eq!(result.unavailable, BTreeSet::from([id(1), id(2), id(3)]));
        assert_eq!(result.refused, vec![(id(99), Refusal::WrongEvent), (id(3), Refusal::OtherRoom)]);
    }

    /// Known events end the walk; an event with nothing missing needs no fetch.
    #[test]
    fn known_ancestors_are_not_fetched() {
        let new = event(10, &[1, 2], 5);
        let result = walk(&new, WalkLimits::default(), |_| true, |_| panic!("nothing to fetch"));
        assert!(result.fetched.is_empty() && result.gaps.is_empty());

        // Step by step: an unanswered event is named again; finishing early leaves it unavailable.
        let mut walk = AncestorWalk::new(&new, WalkLimits::default(), |id| is(id, 1));
        assert_eq!(walk.next_wanted(), Some(id(2)));
        assert_eq!(walk.next_wanted(), Some(id(2)));
        let result = walk.finish();
        assert_eq!(result.unavailable, BTreeSet::from([id(2)]));
        // An answer nobody asked for is ignored.
        let mut walk = AncestorWalk::new(&new, WalkLimits::default(), |_| true);
        walk.received(Some(event(2, &[], 1)), |_| true);
        assert!(walk.finish().fetched.is_empty());
    }

    /// Zero limits fetch nothing and report every missing parent as a gap.
    #[test]
    fn zero_limits_fetch_nothing() {
        let new = event(10, &[1, 2], 5);
        for limits in [WalkLimits { max_events: 0, max_hops: 10 }, WalkLimits { max_events: 10, max_hops: 0 }]
        {
            let result = walk(&new, limits, |_| false, |_| panic!("nothing to fetch"));
            assert_eq!(result.gaps, BTreeSet::from([id(1), id(2)]));
        }
    }
}
