//! Devices: list, inspect, rename, delete.

use ruma::MilliSecondsSinceUnixEpoch;
use ruma::api::client::device::{
    self, delete_device, delete_devices, get_device, get_devices, update_device,
};

use axum::http::StatusCode;

use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Ruma, RumaResponse},
    },
    service::devices::DeviceView,
};

fn to_ruma(view: DeviceView) -> device::Device {
    let mut device = device::Device::new(view.device_id);
    device.display_name = view.display_name;
    device.last_seen_ip = view.last_seen_ip;
    device.last_seen_ts = view.last_seen_ms.and_then(|ms| ms.try_into().ok()).map(MilliSecondsSinceUnixEpoch);
    device
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(
    services: AppState,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let devices = services.devices.list_visible(&req.identity.user_id)?.into_iter().map(to_ruma).collect();
    Ok(get_devices::v3::Response::new(devices))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(
    services: AppState,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let view = services
        .devices
        .get(&req.identity.user_id, &req.body.device_id)?
        .ok_or_else(|| Error::not_found("Not found"))?;
    Ok(get_device::v3::Response::new(to_ruma(view)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`: rename a device; an application service
/// may also create one for its user (spec 1.17, MSC4190), answered with 201.
pub async fn update_device(
    services: AppState,
    req: Ruma<update_device::v3::Request>,
) -> Result<(StatusCode, RumaResponse<update_device::v3::Response>)> {
    let user_id = &req.identity.user_id;
    let device_id = &req.body.device_id;
    let status = if req.identity.appservice.is_some() && services.devices.get(user_id, device_id)?.is_none() {
        services.accounts.create_appservice_device(
            &req.context,
            user_id,
            device_id,
            req.body.display_name,
        )?;
        StatusCode::CREATED
    } else {
        services.accounts.rename_device(user_id, device_id, req.body.display_name)?;
        StatusCode::OK
    };
    Ok((status, RumaResponse(update_device::v3::Response::new())))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete_device(
    services: AppState,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let devices = [req.body.device_id];
    services.accounts.delete_devices(&req.identity, &req.context, &devices, req.body.auth.as_ref()).await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_devices(
    services: AppState,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let auth = req.body.auth.as_ref();
    services.accounts.delete_devices(&req.identity, &req.context, &req.body.devices, auth).await?;
    Ok(delete_devices::v3::Response::new())
}
