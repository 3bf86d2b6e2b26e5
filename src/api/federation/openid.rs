//! OpenID (`ruma::api::federation::openid`): who an OpenID token belongs to.

use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/openid/userinfo`: the user a token from
/// `/user/{userId}/openid/request_token` vouches for; unknown or expired tokens are
/// `401 M_UNKNOWN_TOKEN`.
pub async fn get_openid_userinfo(
    services: AppState,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    let user_id = services.openid.user_of(&req.body.access_token)?;
    Ok(get_openid_userinfo::v1::Response::new(user_id))
}
