//! Dehydrated devices (MSC3814, as matrix-rust-sdk uses them): a device kept on the server
//! so messages sent while all of a user's clients are offline can still be decrypted.

use ruma::{
    api::client::dehydrated_device::{
        delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
    },
    serde::Raw,
};

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
pub async fn put_dehydrated_device(
    services: AppState,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<put_dehydrated_device::unstable::Response> {
    let body = req.body;
    let keys = super::keys::key_upload(Some(&body.device_keys), &body.one_time_keys, &body.fallback_keys)?;
    services.accounts.put_dehydrated_device(
        &req.identity.user_id,
        &body.device_id,
        body.initial_device_display_name,
        body.device_data.into_json(),
        keys,
    )?;
    Ok(put_dehydrated_device::unstable::Response::new(body.device_id))
}

/// `GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
pub async fn get_dehydrated_device(
    services: AppState,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<get_dehydrated_device::unstable::Response> {
    let record = services
        .accounts
        .dehydrated_device(&req.identity.user_id)?
        .ok_or_else(|| Error::not_found("No dehydrated device"))?;
    Ok(get_dehydrated_device::unstable::Response::new(record.device_id, Raw::from_json(record.device_data)))
}

/// `DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`
pub async fn delete_dehydrated_device(
    services: AppState,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<delete_dehydrated_device::unstable::Response> {
    let device_id = services.accounts.delete_dehydrated_device(&req.identity.user_id)?;
    Ok(delete_dehydrated_device::unstable::Response::new(device_id))
}

/// `POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events`:
/// the to-device messages that arrived for the dehydrated device, in pages; a page's
/// `next_batch` acknowledges it.
pub async fn get_events(
    services: AppState,
    req: Ruma<get_events::unstable::Request>,
) -> Result<get_events::unstable::Response> {
    let user_id = &req.identity.user_id;
    let record = services.accounts.dehydrated_device(user_id)?;
    if record.is_none_or(|r| r.device_id != req.body.device_id) {
        return Err(Error::forbidden("That is not your dehydrated device"));
    }
    let since = req.body.next_batch.as_deref().map(parse_stream_token).transpose()?;
    let upto = services.stream.committed();
    let events = services
        .to_device
        .take(user_id, &req.body.device_id, since, upto)?
        .into_iter()
        .map(Raw::from_json)
        .collect();
    let mut response = get_events::unstable::Response::new(events);
    response.next_batch = Some(format!("s{upto}"));
    Ok(response)
}
