//! Server administration in the client-server API: `whois`.

use ruma::api::client::admin::get_user_info;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/admin/whois/{userId}`
pub async fn get_user_info(
    services: AppState,
    req: Ruma<get_user_info::v3::Request>,
) -> Result<get_user_info::v3::Response> {
    services.accounts.whois(&req.identity.user_id, &req.body.user_id)
}
