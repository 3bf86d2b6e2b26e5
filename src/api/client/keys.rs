//! End-to-end encryption keys: upload, query, claim, changes, cross-signing and signatures.

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
    encryption::OneTimeKey,
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Ruma, raw_of},
    },
    service::keys::{CrossSigningUpload, Upload},
};

fn json_of<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("Invalid key: {e}")))
}

/// The keys of an upload (`/keys/upload`, or a dehydrated device's) as the service takes them.
pub(super) fn key_upload<K, T: std::fmt::Display>(
    device_keys: Option<&Raw<K>>,
    one_time_keys: &BTreeMap<T, Raw<OneTimeKey>>,
    fallback_keys: &BTreeMap<T, Raw<OneTimeKey>>,
) -> Result<Upload> {
    let by_id = |keys: &BTreeMap<T, Raw<OneTimeKey>>| -> Result<BTreeMap<String, JsonValue>> {
        keys.iter().map(|(id, key)| Ok((id.to_string(), json_of(key)?))).collect()
    };
    Ok(Upload {
        device_keys: device_keys.map(json_of).transpose()?,
        one_time_keys: by_id(one_time_keys)?,
        fallback_keys: by_id(fallback_keys)?,
    })
}

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys(
    services: AppState,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let body = req.body;
    let device_id = req.identity.device()?;
    services.devices.ensure_may_upload_keys(&req.identity.user_id, device_id)?;
    let upload = key_upload(body.device_keys.as_ref(), &body.one_time_keys, &body.fallback_keys)?;
    let counts = services.keys.upload(&req.identity.user_id, device_id, upload)?;
    let counts =
        counts.into_iter().map(|(alg, n)| (alg.as_str().into(), ruma::UInt::new_saturating(n))).collect();
    Ok(upload_keys::v3::Response::new(counts))
}

/// `POST /_matrix/client/v3/keys/query`
pub async fn get_keys(
    services: AppState,
    req: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response> {
    // Users of other servers are asked of their servers (within a time limit).
    let (result, failures) = services.remote_e2ee.query(&req.identity.user_id, req.body.device_keys).await?;
    let mut response = get_keys::v3::Response::new();
    response.failures = failures;
    for (user, devices) in result.device_keys {
        let devices =
            devices.iter().map(|(id, keys)| Ok((id.clone(), raw_of(keys)?))).collect::<Result<_>>()?;
        response.device_keys.insert(user, devices);
    }
    for (source, target) in [
        (result.master_keys, &mut response.master_keys),
        (result.self_signing_keys, &mut response.self_signing_keys),
        (result.user_signing_keys, &mut response.user_signing_keys),
    ] {
        for (user, key) in source {
            target.insert(user, raw_of(&key)?);
        }
    }
    Ok(response)
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys(
    services: AppState,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response> {
    let wanted: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>> = req
        .body
        .one_time_keys
        .into_iter()
        .map(|(user, devices)| {
            (user, devices.into_iter().map(|(d, alg)| (d, alg.as_str().to_owned())).collect())
        })
        .collect();
    // Other servers' devices' keys are claimed from them (within a time limit).
    let (claimed, failures) = services.remote_e2ee.claim(wanted).await?;
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
    let mut response = claim_keys::v3::Response::new(keys);
    response.failures = failures;
    Ok(response)
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn get_key_changes(
    services: AppState,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let from = parse_stream_token(&req.body.from)?;
    let to = parse_stream_token(&req.body.to)?;
    let (changed, left) = services.sync.key_changes(&req.identity.user_id, from, to)?;
    Ok(get_key_changes::v3::Response::new(changed, left))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
pub async fn upload_signing_keys(
    services: AppState,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let body = req.body;
    let upload = CrossSigningUpload {
        master: body.master_key.as_ref().map(json_of).transpose()?,
        self_signing: body.self_signing_key.as_ref().map(json_of).transpose()?,
        user_signing: body.user_signing_key.as_ref().map(json_of).transpose()?,
    };
    // The first keys, or the same again, need no password; replacing them (an identity
    // reset) does, except for an application service (spec 1.17, MSC4190).
    let reset = services.keys.upload_replaces_master(&req.identity.user_id, &upload)?;
    if reset && req.identity.appservice.is_none() {
        let auth = body.auth.as_ref();
        services
            .accounts
            .reauthenticate_cross_signing(&req.identity.device_identity()?, &req.context, &upload, auth)
            .await?;
    }
    let audit = reset.then_some((services.audit.as_ref(), &req.context));
    services.keys.upload_cross_signing(&req.identity.user_id, upload, audit)?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn upload_signatures(
    services: AppState,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let mut signed: BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>> = BTreeMap::new();
    for (user, keys) in &req.body.signed_keys {
        for (key_id, object) in keys.iter() {
            let value: JsonValue = serde_json::from_str(object.get())
                .map_err(|e| Error::bad_json(format!("Invalid signed key: {e}")))?;
            signed.entry(user.clone()).or_default().insert(key_id.to_owned(), value);
        }
    }
    let failures = services.keys.upload_signatures(&req.identity.user_id, signed)?;
    let mut response = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let mut entries = BTreeMap::new();
        for (key, failure) in keys {
            let failure =
                serde_json::from_value(failure).map_err(|e| Error::internal(format!("failure: {e}")))?;
            entries.insert(key, failure);
        }
        response.failures.insert(user, entries);
    }
    Ok(response)
}
