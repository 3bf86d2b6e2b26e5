//! Which room versions this server speaks, and the rules each one brings (ruma's tables).

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

/// Every room version rooms can be created in or joined at, oldest first. Versions 1–5 are
/// left out: they predate canonical JSON, which the auth rules crate requires.
pub const SUPPORTED: [RoomVersionId; 7] = [
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
