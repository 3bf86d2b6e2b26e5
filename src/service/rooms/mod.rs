//! Rooms: the event graph, state, membership and everything clients do in a room. The
//! storage-owning services (`Events`, `RoomStates`, `Memberships`, `Search`, `Aliases`,
//! `Directory`, `Reports`) sit below the append engine (`Timeline`); the client-facing flows
//! (`RoomCreation`, `MembershipActions`, `RoomActions`, `RoomUpgrades`, `Hierarchy`) sit above it.

pub mod actions;
pub mod admin;
pub mod aliases;
pub mod auth_chains;
pub mod blocked;
pub mod create;
pub mod delayed;
pub mod directory;
pub mod events;
pub mod hierarchy;
pub mod history;
pub mod members;
pub mod membership;
pub mod purge;
pub mod receipts;
pub mod relations;
pub mod remote_invites;
pub mod render;
pub mod reports;
pub mod search;
pub mod state;
pub mod timeline;
pub mod typing;
pub mod upgrade;
pub mod view;
pub mod visibility;
