//! Pure protocol logic: rules the Matrix specification states, as functions of their inputs.
//! No I/O, and no imports from `api`, `service` or `storage`.

pub mod appservice;
pub mod auth;
pub mod federation;
pub mod filter;
pub mod html;
pub mod keys;
pub mod limits;
pub mod media;
pub mod moderation;
pub mod oauth;
pub mod pdu;
pub mod power_levels;
pub mod push;
pub mod rate_limit;
pub mod redaction;
pub mod room_presets;
pub mod room_version;
pub mod search;
pub mod server_discovery;
pub mod server_keys;
pub mod sliding;
pub mod state_resolution;
pub mod user_id;
pub mod visibility;
