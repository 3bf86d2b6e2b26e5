//! Server administration in the client-server API: `whois`, and account locking and
//! suspension (spec v1.18, MSC4323's unstable paths too), which only server admins may use.

use ruma::api::client::admin::{get_user_info, is_user_locked, is_user_suspended, lock_user, suspend_user};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::admin::Moderation,
};

/// `GET /_matrix/client/v3/admin/whois/{userId}`
pub async fn get_user_info(
    services: AppState,
    req: Ruma<get_user_info::v3::Request>,
) -> Result<get_user_info::v3::Response> {
    services.accounts.whois(&req.identity.user_id, &req.body.user_id)
}

/// `GET /_matrix/client/v1/admin/lock/{userId}`
pub async fn is_user_locked(
    services: AppState,
    req: Ruma<is_user_locked::v1::Request>,
) -> Result<is_user_locked::v1::Response> {
    let (locked, _) = services.admin.moderate(&req.identity.user_id, &req.body.user_id, None)?;
    Ok(is_user_locked::v1::Response::new(locked))
}

/// `PUT /_matrix/client/v1/admin/lock/{userId}`
pub async fn lock_user(
    services: AppState,
    req: Ruma<lock_user::v1::Request>,
) -> Result<lock_user::v1::Response> {
    let change = Some((Moderation::Lock, req.body.locked));
    let (locked, _) = services.admin.moderate(&req.identity.user_id, &req.body.user_id, change)?;
    Ok(lock_user::v1::Response::new(locked))
}

/// `GET /_matrix/client/v1/admin/suspend/{userId}`
pub async fn is_user_suspended(
    services: AppState,
    req: Ruma<is_user_suspended::v1::Request>,
) -> Result<is_user_suspended::v1::Response> {
    let (_, suspended) = services.admin.moderate(&req.identity.user_id, &req.body.user_id, None)?;
    Ok(is_user_suspended::v1::Response::new(suspended))
}

/// `PUT /_matrix/client/v1/admin/suspend/{userId}`
pub async fn suspend_user(
    services: AppState,
    req: Ruma<suspend_user::v1::Request>,
) -> Result<suspend_user::v1::Response> {
    let change = Some((Moderation::Suspend, req.body.suspended));
    let (_, suspended) = services.admin.moderate(&req.identity.user_id, &req.body.user_id, change)?;
    Ok(suspend_user::v1::Response::new(suspended))
}
