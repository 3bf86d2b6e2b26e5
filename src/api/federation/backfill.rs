//! Backfill (`ruma::api::federation::backfill`): a room's older events, for servers in it.

use ruma::{MilliSecondsSinceUnixEpoch, api::federation::backfill::get_backfill};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=`: events from `v` back, those the
/// asking server may not see redacted.
pub async fn get_backfill(
    services: AppState,
    req: Ruma<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response> {
    let body = &req.body;
    let pdus = services.room_federation.backfill(
        &req.identity.server_name,
        &body.room_id,
        &body.v,
        body.limit.into(),
    )?;
    Ok(get_backfill::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    ))
}
