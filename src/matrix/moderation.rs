//! Which room events are moderation — one member acting on another, or on the room's
//! powers — and so belong in the audit log.

/// A moderation action an event performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moderation {
    Kick,
    Ban,
    Unban,
    PowerLevels,
    /// A redaction of someone else's event.
    Redaction,
}

impl Moderation {
    /// The audit log's name for the action.
    pub fn action(self) -> &'static str {
        match self {
            Moderation::Kick => "room.kick",
            Moderation::Ban => "room.ban",
            Moderation::Unban => "room.unban",
            Moderation::PowerLevels => "room.power_levels",
            Moderation::Redaction => "room.redact",
        }
    }
}

/// What an event is, as far as telling moderation apart needs.
pub struct EventFacts<'a> {
    pub kind: &'a str,
    pub sender: &'a str,
    pub state_key: Option<&'a str>,
    /// `content.membership` of a member event.
    pub membership: Option<&'a str>,
    /// The membership the member event replaces, if any.
    pub previous_membership: Option<&'a str>,
    /// For a redaction: the sender of the event it redacts, when known.
    pub redacted_sender: Option<&'a str>,
    /// Whether this is the room's first power levels event (set at creation, not a change).
    pub first_of_its_kind: bool,
}

/// The moderation action `event` performs, if it is one.
pub fn classify(event: &EventFacts<'_>) -> Option<Moderation> {
    match event.kind {
        "m.room.member" => {
            let target = event.state_key?;
            if target == event.sender {
                return None;
            }
            match (event.membership?, event.previous_membership) {
                ("ban", _) => Some(Moderation::Ban),
                ("leave", Some("ban")) => Some(Moderation::Unban),
                ("leave", Some("join" | "invite" | "knock")) => Some(Moderation::Kick),
                _ => None,
            }
        }
        "m.room.power_levels" if event.state_key == Some("") && !event.first_of_its_kind => {
            Some(Moderation::PowerLevels)
        }
        "m.room.redaction" => match event.redacted_sender {
            Some(redacted) if redacted != event.sender => Some(Moderation::Redaction),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        sender: &'static str,
        target: &'static str,
        now: &'static str,
        before: Option<&'static str>,
    ) -> EventFacts<'static> {
        EventFacts {
            kind: "m.room.member",
            sender,
            state_key: Some(target),
            membership: Some(now),
            previous_membership: before,
            redacted_sender: None,
            first_of_its_kind: false,
        }
    }

    #[test]
    fn members_acting_on_others() {
        assert_eq!(classify(&member("@m:x", "@u:x", "leave", Some("join"))), Some(Moderation::Kick));
        assert_eq!(classify(&member("@m:x", "@u:x", "leave", Some("invite"))), Some(Moderation::Kick));
        assert_eq!(classify(&member("@m:x", "@u:x", "ban", Some("join"))), Some(Moderation::Ban));
        assert_eq!(classify(&member("@m:x", "@u:x", "ban", None)), Some(Moderation::Ban));
        assert_eq!(classify(&member("@m:x", "@u:x", "leave", Some("ban"))), Some(Moderation::Unban));
        assert_eq!(classify(&member("@m:x", "@u:x", "invite", None)), None);
        assert_eq!(classify(&member("@u:x", "@u:x", "leave", Some("join"))), None, "leaving is not a kick");
    }

    #[test]
    fn power_changes_and_redactions_of_others() {
        let mut power = member("@m:x", "", "", None);
        power.kind = "m.room.power_levels";
        power.membership = None;
        assert_eq!(classify(&power), Some(Moderation::PowerLevels));
        power.first_of_its_kind = true;
        assert_eq!(classify(&power), None, "the room's initial power levels are not a change");

        let mut redaction = member("@m:x", "", "", None);
        redaction.kind = "m.room.redaction";
        redaction.state_key = None;
        redaction.redacted_sender = Some("@u:x");
        assert_eq!(classify(&redaction), Some(Moderation::Redaction));
        redaction.redacted_sender = Some("@m:x");
        assert_eq!(classify(&redaction), None, "redacting one's own event is not moderation");
    }
}
