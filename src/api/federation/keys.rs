//! Keys (`ruma::api::federation::keys`): local users' device and cross-signing keys, and
//! their one-time keys, for other servers (`RemoteE2ee`).

use std::collections::BTreeMap;

use ruma::api::federation::keys::{claim_keys, get_keys};

use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Ruma, raw_of},
    },
};

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn get_keys(
    services: AppState,
    req: Ruma<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response> {
    let result = services.remote_e2ee.serve_query(&req.identity.server_name, &req.body.device_keys)?;
    let mut device_keys = BTreeMap::new();
    for (user, devices) in result.device_keys {
        let devices =
            devices.iter().map(|(id, keys)| Ok((id.clone(), raw_of(keys)?))).collect::<Result<_>>()?;
        device_keys.insert(user, devices);
    }
    let mut response = get_keys::v1::Response::new(device_keys);
    for (user, key) in result.master_keys {
        response.master_keys.insert(user, raw_of(&key)?);
    }
    for (user, key) in result.self_signing_keys {
        response.self_signing_keys.insert(user, raw_of(&key)?);
    }
    Ok(response)
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn claim_keys(
    services: AppState,
    req: Ruma<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response> {
    let wanted = req
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            (user.clone(), devices.iter().map(|(d, alg)| (d.clone(), alg.as_str().to_owned())).collect())
        })
        .collect();
    let claimed = services.remote_e2ee.serve_claim(&wanted)?;
    let mut keys = BTreeMap::new();
    for (user, devices) in claimed {
        let mut per_device = BTreeMap::new();
        for (device, by_id) in devices {
            let mut entries = BTreeMap::new();
            for (key_id, key) in by_id {
                let id = key_id.try_into().map_err(|_| Error::internal("stored one-time key ID"))?;
                entries.insert(id, raw_of(&key)?);
            }
            per_device.insert(device, entries);
        }
        keys.insert(user, per_device);
    }
    Ok(claim_keys::v1::Response::new(keys))
}
