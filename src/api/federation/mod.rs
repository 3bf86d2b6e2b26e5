//! Server-server API handlers, one file per `ruma::api::federation` module. OpenID's
//! `userinfo`, which third parties on the same deployment (Element Call's LiveKit JWT
//! service) call to check a user, is served whether or not federation is on; the others
//! only with `allow_federation = true`: the key server and notary (`discovery`), and the
//! profile and directory queries (`query`). Rooms do not federate yet.

pub mod discovery;
pub mod openid;
pub mod query;
