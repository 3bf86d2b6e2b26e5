//! Simplified sliding sync (MSC4186): which events move a room up a room list, which state a
//! request asks for (`required_state`), which rooms a list keeps (`filters`) and which of
//! them it shows (`ranges`). Pure functions of the request and of facts about a room.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hash, Hasher},
    ops::RangeInclusive,
};

use ruma::{
    UInt, UserId,
    events::{StateEventType, TimelineEventType},
};

/// `required_state` entries one list or subscription may ask for (Element X sends 17).
pub const MAX_REQUIRED_STATE: usize = 100;
/// Ranges one list may ask for.
pub const MAX_RANGES: usize = 100;
/// Lists one request may hold.
pub const MAX_LISTS: usize = 100;
/// Room subscriptions one request may hold.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;
/// The most timeline events per room; larger limits are lowered to it.
pub const MAX_TIMELINE_LIMIT: usize = 100;

/// The event types that move a room up a room list (its `bump_stamp`): what a person
/// would call activity. Reactions, edits of state, receipts and profile changes do not.
/// The user's own membership changes also count; the caller adds those.
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];

/// Whether an event of type `kind` moves its room's bump stamp.
pub fn bumps(kind: &str) -> bool {
    BUMP_TYPES.contains(&kind)
}

/// [`bumps`] for an event's type, without writing the common types out as strings.
pub fn bumps_event(kind: &TimelineEventType) -> bool {
    use TimelineEventType as T;
    match kind {
        T::RoomCreate | T::RoomMessage | T::RoomEncrypted | T::Sticker | T::CallInvite => true,
        T::RoomMember | T::Reaction | T::RoomRedaction | T::RoomName | T::RoomTopic | T::RoomPowerLevels => {
            false
        }
        other => bumps(&other.to_string()),
    }
}

/// The state keys asked for of one event type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Keys {
    /// `*`: every state key.
    all: bool,
    exact: BTreeSet<String>,
}

/// The union of `required_state` entries of the lists and subscriptions that show a room,
/// with `$ME` replaced by the user's ID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequiredState {
    /// `["*", "*"]`.
    everything: bool,
    /// `["*", key]`: these state keys of every type.
    any_type: BTreeSet<String>,
    by_type: BTreeMap<String, Keys>,
    /// `["m.room.member", "$LAZY"]`: the members of the timeline's senders.
    lazy_members: bool,
}

/// Why a `required_state` was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyEntries;

impl RequiredState {
    /// Add one list's or subscription's entries.
    pub fn add(&mut self, entries: &[(StateEventType, String)], me: &UserId) -> Result<(), TooManyEntries> {
        if entries.len() > MAX_REQUIRED_STATE {
            return Err(TooManyEntries);
        }
        for (kind, key) in entries {
            let kind = kind.to_string();
            let key = if key == "$ME" { me.to_string() } else { key.clone() };
            match (kind.as_str(), key.as_str()) {
                ("*", "*") => self.everything = true,
                ("*", _) => {
                    self.any_type.insert(key);
                }
                ("m.room.member", "$LAZY") => self.lazy_members = true,
                (_, "*") => self.by_type.entry(kind).or_default().all = true,
                _ => {
                    self.by_type.entry(kind).or_default().exact.insert(key);
                }
            }
        }
        Ok(())
    }

    /// Nothing asked for.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.any_type.is_empty() && self.by_type.is_empty() && !self.lazy_members
    }

    /// Whether the members of the timeline's senders are asked for.
    pub fn lazy_members(&self) -> bool {
        self.lazy_members
    }

    /// Whether the state event `(kind, state_key)` is asked for, leaving `$LAZY` aside.
    pub fn wants(&self, kind: &str, state_key: &str) -> bool {
        if self.everything || self.any_type.contains(state_key) {
            return true;
        }
        self.by_type.get(kind).is_some_and(|keys| keys.all || keys.exact.contains(state_key))
    }

    /// A fingerprint of what is asked, to tell whether a room was sent under the same.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    /// The entries of `state` asked for, `senders` being the timeline's senders whose
    /// member events `$LAZY` asks for. Exact entries are looked up; wildcards walk the map.
    pub fn select<'s, V: Clone>(
        &self,
        state: &'s imbl::HashMap<(StateEventType, String), V>,
        senders: &BTreeSet<&str>,
    ) -> Vec<(&'s (StateEventType, String), &'s V)> {
        let lazy = |kind: &StateEventType, key: &str| {
            self.lazy_members && *kind == StateEventType::RoomMember && senders.contains(key)
        };
        let walk = self.everything || !self.any_type.is_empty() || self.by_type.values().any(|k| k.all);
        if walk {
            return state
                .iter()
                .filter(|((kind, key), _)| self.wants(&kind.to_string(), key) || lazy(kind, key))
                .collect();
        }
        let mut picked = Vec::new();
        let mut seen = BTreeSet::new();
        let wanted = self.by_type.iter().flat_map(|(kind, keys)| {
            keys.exact.iter().map(move |key| (StateEventType::from(kind.as_str()), key.clone()))
        });
        let lazy_keys = senders
            .iter()
            .filter(|_| self.lazy_members)
            .map(|sender| (StateEventType::RoomMember, (*sender).to_owned()));
        for key in wanted.chain(lazy_keys) {
            if let Some((key, value)) = state.get_key_value(&key)
                && seen.insert(key)
            {
                picked.push((key, value));
            }
        }
        picked
    }
}

/// What a list's `filters` ask about a room, the room types as their strings (`None` for a
/// room without a type).
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    pub room_types: Option<Vec<Option<String>>>,
    pub not_room_types: Vec<Option<String>>,
    /// Whether `spaces` was given (the caller tells whether a room is in one of them).
    pub spaces: bool,
}

/// Facts about one room of the user, as list filters need them.
#[derive(Clone, Debug, Default)]
pub struct RoomFacts<'a> {
    pub invite: bool,
    pub dm: bool,
    pub encrypted: bool,
    pub room_type: Option<&'a str>,
    /// Whether the room is a child of one of the filter's spaces.
    pub in_spaces: bool,
}

impl ListFilter {
    /// Whether the list keeps the room: every given criterion holds (absent ones do not
    /// filter); a type in both `room_types` and `not_room_types` is left out.
    pub fn allows(&self, room: &RoomFacts<'_>) -> bool {
        let kind = room.room_type.map(str::to_owned);
        self.is_dm.is_none_or(|dm| dm == room.dm)
            && self.is_encrypted.is_none_or(|e| e == room.encrypted)
            && self.is_invite.is_none_or(|i| i == room.invite)
            && self.room_types.as_ref().is_none_or(|types| types.contains(&kind))
            && !self.not_room_types.contains(&kind)
            && (!self.spaces || room.in_spaces)
    }
}

/// Why a list's `ranges` were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRanges {
    TooMany,
    /// A range whose start is after its end.
    Backwards,
}

/// A list's ranges as index ranges into its `count` rooms, clamped to them (a range
/// reaching past the end is cut; one starting past it is dropped).
pub fn ranges(asked: &[(UInt, UInt)], count: usize) -> Result<Vec<RangeInclusive<usize>>, BadRanges> {
    if asked.len() > MAX_RANGES {
        return Err(BadRanges::TooMany);
    }
    let mut clamped = Vec::new();
    for (start, end) in asked {
        if start > end {
            return Err(BadRanges::Backwards);
        }
        let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
        let end = usize::try_from(u64::from(*end)).unwrap_or(usize::MAX);
        if start < count {
            clamped.push(start..=end.min(count - 1));
        }
    }
    Ok(clamped)
}

/// A timeline limit as asked, lowered to [`MAX_TIMELINE_LIMIT`].
pub fn timeline_limit(asked: UInt) -> usize {
    usize::try_from(u64::from(asked)).unwrap_or(MAX_TIMELINE_LIMIT).min(MAX_TIMELINE_LIMIT)
}

#[cfg(test)]
mod tests {
    use ruma::{uint, user_id};

    use super::*;

    fn required(entries: &[(&str, &str)]) -> RequiredState {
        let entries: Vec<(StateEventType, String)> =
            entries.iter().map(|(k, s)| (StateEventType::from(*k), (*s).to_owned())).collect();
        let mut required = RequiredState::default();
        required.add(&entries, user_id!("@me:x")).unwrap();
        required
    }

    fn state(keys: &[(&str, &str)]) -> imbl::HashMap<(StateEventType, String), String> {
        keys.iter().map(|(k, s)| ((StateEventType::from(*k), (*s).to_owned()), format!("{k}|{s}"))).collect()
    }

    fn picked(
        required: &RequiredState,
        state: &imbl::HashMap<(StateEventType, String), String>,
        senders: &[&str],
    ) -> Vec<String> {
        let senders: BTreeSet<&str> = senders.iter().copied().collect();
        let mut picked: Vec<String> =
            required.select(state, &senders).into_iter().map(|(_, v)| v.clone()).collect();
        picked.sort();
        picked
    }

    #[test]
    fn exact_me_and_lazy_entries() {
        let room = state(&[
            ("m.room.name", ""),
            ("m.room.topic", ""),
            ("m.room.member", "@me:x"),
            ("m.room.member", "@a:x"),
            ("m.room.member", "@b:x"),
        ]);
        let r = required(&[("m.room.name", ""), ("m.room.member", "$ME"), ("m.room.member", "$LAZY")]);
        assert!(r.lazy_members());
        assert_eq!(
            picked(&r, &room, &["@a:x"]),
            ["m.room.member|@a:x", "m.room.member|@me:x", "m.room.name|"]
        );
        // Without $LAZY the senders' members are not sent.
        let r = required(&[("m.room.name", "")]);
        assert_eq!(picked(&r, &room, &["@a:x"]), ["m.room.name|"]);
        // A missing entry is simply absent.
        let r = required(&[("m.room.avatar", "")]);
        assert!(picked(&r, &room, &[]).is_empty());
    }

    #[test]
    fn wildcards() {
        let room = state(&[
            ("m.room.name", ""),
            ("m.room.member", "@a:x"),
            ("m.room.member", "@b:x"),
            ("m.space.child", "!c:x"),
            ("m.room.topic", "@a:x"),
        ]);
        assert_eq!(picked(&required(&[("*", "*")]), &room, &[]).len(), 5);
        assert_eq!(
            picked(&required(&[("m.room.member", "*")]), &room, &[]),
            ["m.room.member|@a:x", "m.room.member|@b:x"]
        );
        assert_eq!(
            picked(&required(&[("*", "@a:x")]), &room, &[]),
            ["m.room.member|@a:x", "m.room.topic|@a:x"]
        );
        // A wildcard walk still honours $LAZY.
        assert_eq!(
            picked(&required(&[("m.space.child", "*"), ("m.room.member", "$LAZY")]), &room, &["@b:x"]),
            ["m.room.member|@b:x", "m.space.child|!c:x"]
        );
    }

    #[test]
    fn unions_and_fingerprints() {
        let mut a = required(&[("m.room.name", "")]);
        let b = required(&[("m.room.name", "")]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        a.add(&[(StateEventType::RoomTopic, String::new())], user_id!("@me:x")).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(a.wants("m.room.topic", "") && a.wants("m.room.name", "") && !a.wants("m.room.avatar", ""));
        assert!(RequiredState::default().is_empty());
    }

    #[test]
    fn too_many_entries_are_refused() {
        let entries: Vec<(StateEventType, String)> = (0..=MAX_REQUIRED_STATE)
            .map(|i| (StateEventType::from(format!("t{i}")), String::new()))
            .collect();
        assert_eq!(RequiredState::default().add(&entries, user_id!("@me:x")), Err(TooManyEntries));
    }

    #[test]
    fn list_filters() {
        let dm = RoomFacts { dm: true, ..Default::default() };
        let space = RoomFacts { room_type: Some("m.space"), ..Default::default() };
        let invite = RoomFacts { invite: true, encrypted: true, ..Default::default() };
        let all = ListFilter::default();
        assert!(all.allows(&dm) && all.allows(&space) && all.allows(&invite));
        let dms = ListFilter { is_dm: Some(true), ..Default::default() };
        assert!(dms.allows(&dm) && !dms.allows(&space));
        let not_spaces = ListFilter { not_room_types: vec![Some("m.space".into())], ..Default::default() };
        assert!(not_spaces.allows(&dm) && !not_spaces.allows(&space));
        let plain = ListFilter { room_types: Some(vec![None]), ..Default::default() };
        assert!(plain.allows(&dm) && !plain.allows(&space));
        let both = ListFilter {
            room_types: Some(vec![Some("m.space".into())]),
            not_room_types: vec![Some("m.space".into())],
            ..Default::default()
        };
        assert!(!both.allows(&space), "not_room_types wins");
        let invites = ListFilter { is_invite: Some(true), is_encrypted: Some(true), ..Default::default() };
        assert!(invites.allows(&invite) && !invites.allows(&dm));
        let in_spaces = ListFilter { spaces: true, ..Default::default() };
        assert!(
            !in_spaces.allows(&dm) && in_spaces.allows(&RoomFacts { in_spaces: true, ..Default::default() })
        );
    }

    #[test]
    fn bump_types() {
        for kind in ["m.room.message", "m.room.encrypted", "m.sticker", "m.call.invite", "m.room.create"] {
            assert!(bumps(kind) && bumps_event(&TimelineEventType::from(kind)), "{kind}");
        }
        for kind in ["m.reaction", "m.room.member", "m.room.name", "m.room.redaction", "m.receipt"] {
            assert!(!bumps(kind) && !bumps_event(&TimelineEventType::from(kind)), "{kind}");
        }
    }

    #[test]
    fn ranges_are_clamped_and_checked() {
        assert_eq!(ranges(&[(uint!(0), uint!(19))], 5), Ok(vec![0..=4]));
        assert_eq!(ranges(&[(uint!(0), UInt::MAX)], 3), Ok(vec![0..=2]));
        assert_eq!(ranges(&[(uint!(10), uint!(19))], 5), Ok(vec![]));
        assert_eq!(ranges(&[(uint!(0), uint!(0))], 0), Ok(vec![]));
        assert_eq!(ranges(&[(uint!(5), uint!(1))], 10), Err(BadRanges::Backwards));
        let many = vec![(uint!(0), uint!(1)); MAX_RANGES + 1];
        assert_eq!(ranges(&many, 10), Err(BadRanges::TooMany));
        assert_eq!(timeline_limit(uint!(5)), 5);
        assert_eq!(timeline_limit(uint!(100_000)), MAX_TIMELINE_LIMIT);
    }
}
