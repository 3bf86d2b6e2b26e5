//! Discovery (`ruma::api::federation::discovery`): our keys, other servers' keys as a
//! notary, and the server's version.

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    let text =
        serde_json::value::to_raw_value(value).map_err(|e| Error::internal(format!("key response: {e}")))?;
    Ok(Raw::from_json(text))
}

fn ms(value: Option<MilliSecondsSinceUnixEpoch>) -> u64 {
    value.map_or(0, |v| u64::from(v.get()))
}

/// `GET /_matrix/key/v2/server`: our signing key, former keys, signed.
pub async fn get_server_keys(
    services: AppState,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(raw(&services.server_keys.key_response()?)?))
}

/// `POST /_matrix/key/v2/query`: as a notary, the keys of each server asked for, re-signed
/// by us (a server whose keys cannot be had is left out, as the spec allows).
pub async fn get_remote_server_keys_batch(
    services: AppState,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    let mut answers = Vec::new();
    for (server, keys) in &req.body.server_keys {
        let minimum = keys.values().map(|criteria| ms(criteria.minimum_valid_until_ts)).max().unwrap_or(0);
        match services.remote_keys.notary_answer(server, minimum).await {
            Ok(found) => {
                for answer in &found {
                    answers.push(raw(answer)?);
                }
            }
            Err(e) => tracing::info!(%server, error = %e, "notary query: keys not available"),
        }
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(answers))
}

/// `GET /_matrix/key/v2/query/{serverName}`: the same for one server.
pub async fn get_remote_server_keys(
    services: AppState,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    let found = services
        .remote_keys
        .notary_answer(&req.body.server_name, ms(Some(req.body.minimum_valid_until_ts)))
        .await?;
    Ok(get_remote_server_keys::v2::Response::new(found.iter().map(raw).collect::<Result<_>>()?))
}

/// `GET /_matrix/federation/v1/version`
pub async fn get_server_version(
    _services: AppState,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("conduit".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
