//! Devices (`ruma::api::federation::device`): a local user's device list, for servers
//! sharing a room with them (`RemoteE2ee`).

use ruma::{
    UInt,
    api::federation::device::get_devices::{self, v1::UserDevice},
};

use crate::{
    Result,
    api::{
        AppState,
        ruma::{Ruma, raw_of},
    },
};

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub async fn get_devices(
    services: AppState,
    req: Ruma<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response> {
    let user_id = &req.body.user_id;
    let list = services.remote_e2ee.serve_devices(user_id)?;
    let mut response = get_devices::v1::Response::new(user_id.clone(), UInt::new_saturating(list.stream_id));
    for (device_id, keys, name) in list.devices {
        let mut device = UserDevice::new(device_id, raw_of(&keys)?);
        device.device_display_name = name;
        response.devices.push(device);
    }
    response.master_key = list.master_key.as_ref().map(raw_of).transpose()?;
    response.self_signing_key = list.self_signing_key.as_ref().map(raw_of).transpose()?;
    Ok(response)
}
