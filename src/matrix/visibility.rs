//! History visibility: whether a user may see an event, from the room's
//! `m.room.history_visibility` at that event and the user's membership then and now.
//! The one rule every read path asks (spec: client-server API, "History visibility").

use ruma::events::room::{history_visibility::HistoryVisibility, member::MembershipState};

/// What the decision needs to know about one event and one user.
#[derive(Clone, Debug)]
pub struct VisibilityInput {
    /// The visibility in force at the event. For a change of visibility, the caller passes
    /// the stricter of the old and new setting, so the change itself leaks nothing.
    pub history_visibility: HistoryVisibility,
    /// The user's membership in the state at the event (`None`: never a member then).
    pub membership_at_event: Option<MembershipState>,
    /// Whether the user is joined to the room now.
    pub joined_now: bool,
    /// Whether the event is the user's own membership event, which they always see.
    pub own_membership_event: bool,
}

/// The spec's rule, as Synapse applies it:
/// - `world_readable`: anyone;
/// - joined at the event: yes;
/// - `shared`: any event while the user is joined now (history before they joined too);
/// - `invited`: also while invited at the event;
/// - `joined`: only while joined at the event.
pub fn may_see_event(input: &VisibilityInput) -> bool {
    if input.own_membership_event {
        return true;
    }
    let membership = input.membership_at_event.as_ref();
    match &input.history_visibility {
        HistoryVisibility::WorldReadable => true,
        _ if membership == Some(&MembershipState::Join) => true,
        HistoryVisibility::Shared => input.joined_now,
        HistoryVisibility::Invited => membership == Some(&MembershipState::Invite),
        // `joined`, and any value this server does not know, which is treated as the strictest.
        _ => false,
    }
}

/// Whether another server may see an event (what `/backfill` and the other federation
/// reads answer in full; Synapse sends the redacted form otherwise), by the visibility at
/// the event and the memberships its users had then:
/// - `world_readable` and `shared`: yes;
/// - `invited`: if one of its users was invited or joined at the event;
/// - `joined` (and any unknown setting): if one of its users was joined at the event.
pub fn server_may_see_event<'a>(
    history_visibility: &HistoryVisibility,
    memberships_at_event: impl IntoIterator<Item = &'a MembershipState>,
) -> bool {
    let mut memberships = memberships_at_event.into_iter();
    match history_visibility {
        HistoryVisibility::WorldReadable | HistoryVisibility::Shared => true,
        HistoryVisibility::Invited => {
            memberships.any(|m| matches!(m, MembershipState::Join | MembershipState::Invite))
        }
        _ => memberships.any(|m| *m == MembershipState::Join),
    }
}

/// How open a setting is, for picking the more open of two.
fn openness(visibility: &HistoryVisibility) -> u8 {
    match visibility {
        HistoryVisibility::WorldReadable => 3,
        HistoryVisibility::Shared => 2,
        HistoryVisibility::Invited => 1,
        _ => 0,
    }
}

/// The more open of two settings. A history-visibility event may be seen by whoever the
/// setting before it or the one it sets would let see it (the spec's rule), and since each
/// setting lets see everyone a closer one does, that is whoever the more open one lets see.
pub fn more_open(a: HistoryVisibility, b: HistoryVisibility) -> HistoryVisibility {
    if openness(&a) >= openness(&b) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_another_server_may_see() {
        use HistoryVisibility::*;
        use MembershipState::{Ban, Invite, Join, Leave};
        let cases: &[(HistoryVisibility, &[MembershipState], bool)] = &[
            (WorldReadable, &[], true),
            (Shared, &[], true),
            (Shared, &[Leave], true),
            (Invited, &[], false),
            (Invited, &[Leave, Ban], false),
            (Invited, &[Leave, Invite], true),
            (Invited, &[Join], true),
            (Joined, &[Invite], false),
            (Joined, &[Leave, Join], true),
            (Joined, &[], false),
        ];
        for (visibility, memberships, expected) in cases {
            assert_eq!(
                server_may_see_event(visibility, memberships.iter()),
                *expected,
                "{visibility:?} with {memberships:?}"
            );
        }
    }

    fn check(
        visibility: HistoryVisibility,
        at_event: Option<MembershipState>,
        joined_now: bool,
        expected: bool,
    ) {
        let input = VisibilityInput {
            history_visibility: visibility.clone(),
            membership_at_event: at_event.clone(),
            joined_now,
            own_membership_event: false,
        };
        assert_eq!(may_see_event(&input), expected, "{visibility:?} at={at_event:?} joined_now={joined_now}");
    }

    #[test]
    fn each_setting() {
        use HistoryVisibility::*;
        use MembershipState as M;
        // world_readable: everyone, even strangers.
        check(WorldReadable, None, false, true);
        // shared: members now see all history, strangers and leavers see none of it.
        check(Shared, None, true, true);
        check(Shared, None, false, false);
        check(Shared, Some(M::Leave), false, false);
        check(Shared, Some(M::Join), false, true);
        // invited: from the invite on.
        check(Invited, Some(M::Invite), false, true);
        check(Invited, None, true, false);
        check(Invited, Some(M::Join), true, true);
        // joined: only while joined.
        check(Joined, Some(M::Invite), true, false);
        check(Joined, None, true, false);
        check(Joined, Some(M::Join), false, true);
    }

    #[test]
    fn own_membership_is_always_visible() {
        let input = VisibilityInput {
            history_visibility: HistoryVisibility::Joined,
            membership_at_event: Some(MembershipState::Leave),
            joined_now: false,
            own_membership_event: true,
        };
        assert!(may_see_event(&input));
    }

    #[test]
    fn more_open_picks_the_open_one() {
        use HistoryVisibility::*;
        assert_eq!(more_open(WorldReadable, Joined), WorldReadable);
        assert_eq!(more_open(Joined, WorldReadable), WorldReadable);
        assert_eq!(more_open(Invited, Shared), Shared);
    }
}
