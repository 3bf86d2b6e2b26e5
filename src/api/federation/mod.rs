//! Server-server API handlers, one file per `ruma::api::federation` module. Federation is not
//! implemented; the only endpoint served is OpenID's `userinfo`, which third parties on the
//! same deployment (Element Call's LiveKit JWT service) call to check a user, so it is served
//! whether or not federation is on.

pub mod openid;
