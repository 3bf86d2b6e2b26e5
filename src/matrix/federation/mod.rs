//! The protocol pieces of federation that need no I/O: what the inbound path checks on every
//! PDU a remote server sends, and what the outbound path does to every PDU this server sends.
//!
//! The spec's checks on receipt of a PDU ("Checks performed on receipt of a PDU", server-server
//! API), in its order, and where each lives:
//!
//! 1. a valid event of the room version's format, else dropped: [`format::parse_pdu`];
//! 2. the signatures the spec requires, else dropped, and
//! 3. the content hash, else the redacted copy is used: [`verify::check_signatures_and_hash`];
//! 4. to 6. the authorization rules against the auth events, the state before, the current
//!    state: `matrix::auth::check_event`, with the state from `matrix::state_resolution`;
//!
//! plus [`ancestors::AncestorWalk`], the bounded walk over missing `prev_events`, and
//! [`sign`], hashing and signing events this server sends (or co-signs).

pub mod ancestors;
pub mod format;
pub mod sign;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;
