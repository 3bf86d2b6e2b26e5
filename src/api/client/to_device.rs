//! Sending to-device messages.

use std::collections::BTreeMap;

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::to_device::Target,
};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    services: AppState,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let body = req.body;
    let mut messages = BTreeMap::new();
    for (user, devices) in body.messages {
        let targets = devices
            .into_iter()
            .map(|(device, content)| {
                let target = match device {
                    DeviceIdOrAllDevices::DeviceId(id) => Target::Device(id),
                    _ => Target::AllDevices,
                };
                (target, content.into_json())
            })
            .collect();
        messages.insert(user, targets);
    }
    services.to_device.send(
        &req.identity.user_id,
        &req.identity.device_id,
        &body.event_type.to_string(),
        body.txn_id.as_str(),
        messages,
    )?;
    Ok(send_event_to_device::v3::Response::new())
}
