//! Sending to-device messages.

use std::collections::BTreeMap;

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::{rate_limits::Limiter, to_device::Target},
};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    services: AppState,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let body = req.body;
    let event_type = body.event_type.to_string();
    let sender = &req.identity.user_id;
    // Key requests to other users past `rc_key_requests` (per sending device, one per
    // recipient) are dropped, as Synapse drops them: the sender is not told.
    let scope = req.identity.txn_scope();
    let sender_device = format!("{sender}|{scope}");
    let mut messages = BTreeMap::new();
    for (user, devices) in body.messages {
        if event_type == "m.room_key_request"
            && user != *sender
            && !services.rate_limits.allows(Limiter::KeyRequests, &sender_device, Some(sender))
        {
            tracing::debug!(%sender, recipient = %user, "room key request dropped by rc_key_requests");
            continue;
        }
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
    // Messages for users of other servers leave through their servers.
    services.remote_e2ee.send_to_device(
        &req.identity.user_id,
        &scope,
        &event_type,
        body.txn_id.as_str(),
        messages,
    )?;
    Ok(send_event_to_device::v3::Response::new())
}
