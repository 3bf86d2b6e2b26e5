//! Client-server API handlers, one file per `ruma::api::client` module, one thin handler per
//! endpoint, named after it.

pub mod account;
pub mod device;
pub mod discovery;
pub mod profile;
pub mod session;

use crate::{Error, Result, service::devices::DeviceIdentity};

/// Endpoints declared with optional auth (so a password reset by email could work without a
/// token) still need a user here, since that reset path is not offered.
fn required(identity: Option<DeviceIdentity>) -> Result<DeviceIdentity> {
    identity.ok_or_else(Error::missing_token)
}
