//! Server-server API handlers, one file per `ruma::api::federation` module. OpenID's
//! `userinfo`, which third parties on the same deployment (Element Call's LiveKit JWT
//! service) call to check a user, is served whether or not federation is on; the others
//! only with `allow_federation = true`: the key server and notary (`discovery`), the
//! profile and directory queries (`query`), and rooms: inbound transactions
//! (`transactions`), joins and leaves as the resident server and invites of local users
//! (`membership`), and the reads of servers in a room (`event`, `authorization`,
//! `backfill`), end-to-end encryption's keys and device lists (`keys`, `device`), and
//! this server's media for other servers (`media`), and its public room directory
//! (`directory`).

pub mod authorization;
pub mod backfill;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod event;
pub mod keys;
pub mod media;
pub mod membership;
pub mod openid;
pub mod query;
pub mod space;
pub mod transactions;
