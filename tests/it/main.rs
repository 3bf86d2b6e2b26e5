//! The one integration test binary: boots the server in-process on port 0 with a temp
//! RocksDB and speaks HTTP to it.

mod account;
mod architecture;
mod backup;
mod cli;
mod concurrency;
mod delayed_events;
mod device;
mod directory;
mod discovery;
mod edge;
mod ephemeral;
mod harness;
mod history;
mod keys;
mod legacy;
mod limits;
mod media;
mod membership;
mod profile;
mod push;
mod relations;
mod room_versions;
mod rooms;
mod sdk;
mod search;
mod session;
mod settings;
mod sync;
mod timeline;
mod upgrade;
mod user_directory;
mod web;
