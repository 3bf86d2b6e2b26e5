//! Which room versions this server speaks, and the rules each one brings (ruma's tables).
//!
//! Every version from 1 to 12 is supported, as in Synapse 1.163, which reports all of them
//! stable. ruma's `RoomVersionRules` drive the differences: event ID and reference formats
//! (`matrix::pdu`), the authorization rules (`m.room.aliases` and redactions in v1–v5 and
//! v1–v2, knocking from v7, restricted joins from v8, integer power levels from v10, the
//! create event's `creator` until v10, privileged creators from v12) and the redaction
//! algorithm (what each version keeps). Two differences matter only once federation exists:
//! v1 rooms resolve state with the first state resolution algorithm, which ruma does not
//! implement (its `state_res::resolve` takes `StateResolutionV2Rules`, which
//! `rules.state_res.v2_rules()` does not give for v1, so v2 cannot be run on a v1 room by
//! mistake); and from v5 a remote server's signing key must be valid at the event's
//! `origin_server_ts` (`rules.enforce_key_validity`).

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

/// Every room version rooms can be created in, joined at or upgraded from, oldest first.
pub const SUPPORTED: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// The default for new rooms when the config names none: what Synapse 1.163 creates.
pub const DEFAULT: RoomVersionId = RoomVersionId::V12;

/// The rules of a version this server supports, or `None`.
pub fn rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    if SUPPORTED.contains(version) { version.rules() } else { None }
}
