//! conduit: a Matrix homeserver for companies that host their own chat.
//!
//! Code map, in reading order:
//! - [`config`]: the one `Config`, loaded from `conduit.toml` and `CONDUIT_*` variables;
//! - [`error`]: the one `Error` type with its Matrix errcode;
//! - [`server`]: builds storage and services, serves HTTP until told to stop;
//! - [`net`]: listeners, TLS, the connection cap and the connection timeouts, below routing;
//! - [`metrics`]: the Prometheus registry and what it reads at scrape time;
//! - [`reload`]: the live-reload hook (SIGHUP) and its parts, [`logging`] the first;
//! - [`control`]: operator commands over a Unix socket to the running server;
//! - [`systemd`]: readiness, reload, stop and watchdog notices to systemd;
//! - [`api`]: the HTTP edge (router, extractor, error mapping, one handler per endpoint);
//! - [`service`]: the logic, one service per concern, each owning its tables;
//! - [`matrix`]: pure protocol rules, no I/O;
//! - [`storage`]: the key-value engine trait, RocksDB, typed tables and the catalogue.
//!
//! Dependencies point one way: `api` → `service` → `storage`; `matrix` imports none of them.
//! `docs/ARCHITECTURE.md` is the longer map.

pub mod api;
pub mod config;
pub mod control;
pub mod error;
pub mod logging;
pub mod matrix;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod server;
pub mod service;
pub mod storage;
pub mod systemd;

pub use error::{Error, Result};
