//! Third-party networks (`ruma::api::client::thirdparty`): protocols that bridges offer and
//! lookups of their users and locations. Protocols come from application services, and none
//! is registered yet, so there are no protocols and every lookup finds nothing: 404, the
//! spec's answer for an unknown protocol and for a lookup without results (Synapse answers
//! the lookups with empty lists). Element loads
//! the protocol list on start and fails its room directory when the endpoint is missing.

use std::collections::BTreeMap;

use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
    get_user_for_protocol, get_user_for_user_id,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn get_protocols(
    _: AppState,
    _: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(BTreeMap::new()))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn get_protocol(
    _: AppState,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<get_protocol::v3::Response> {
    Err(Error::not_found(format!("Unknown protocol {:?}", req.body.protocol)))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn get_location_for_protocol(
    _: AppState,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    Err(Error::not_found(format!("Unknown protocol {:?}", req.body.protocol)))
}

/// `GET /_matrix/client/v3/thirdparty/location`
pub async fn get_location_for_room_alias(
    _: AppState,
    _: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    Err(Error::not_found("No third-party location for this alias"))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn get_user_for_protocol(
    _: AppState,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    Err(Error::not_found(format!("Unknown protocol {:?}", req.body.protocol)))
}

/// `GET /_matrix/client/v3/thirdparty/user`
pub async fn get_user_for_user_id(
    _: AppState,
    _: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    Err(Error::not_found("No third-party user for this user ID"))
}
