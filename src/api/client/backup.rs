//! Server-side key backups (`/room_keys/version`, `/room_keys/keys`): thin conversions between
//! ruma's types and `KeyBackup`. Every call acts on the requester's own backups.

use std::collections::BTreeMap;

use ruma::{
    UInt,
    api::client::backup::{
        BackupAlgorithm, KeyBackupData, RoomKeyBackup, add_backup_keys, add_backup_keys_for_room,
        add_backup_keys_for_session, create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info, update_backup_version,
    },
    serde::Raw,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::key_backup::{BackupVersion, KeyCount, KeyScope, KeysByRoom},
};

/// The `algorithm` and `auth_data` of a version, as ruma's responses carry them.
fn algorithm_json(info: &BackupVersion) -> Result<Raw<BackupAlgorithm>> {
    #[derive(serde::Serialize)]
    struct AlgorithmJson<'a> {
        algorithm: &'a str,
        auth_data: &'a RawJsonValue,
    }
    let json = AlgorithmJson { algorithm: &info.algorithm, auth_data: &info.auth_data };
    serde_json::value::to_raw_value(&json)
        .map(Raw::from_json)
        .map_err(|e| Error::internal(format!("serialising backup algorithm: {e}")))
}

fn etag_and_count(counts: KeyCount) -> (String, UInt) {
    (counts.etag.to_string(), UInt::new_saturating(counts.count))
}

fn sessions_json(sessions: BTreeMap<String, Box<RawJsonValue>>) -> BTreeMap<String, Raw<KeyBackupData>> {
    sessions.into_iter().map(|(session_id, data)| (session_id, Raw::from_json(data))).collect()
}

fn sessions_upload(sessions: BTreeMap<String, Raw<KeyBackupData>>) -> BTreeMap<String, Box<RawJsonValue>> {
    sessions.into_iter().map(|(session_id, data)| (session_id, data.into_json())).collect()
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(
    services: AppState,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let version = services.key_backup.create_version(&req.identity.user_id, req.body.algorithm.json())?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn get_latest_backup_info(
    services: AppState,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let info = services.key_backup.version_info(&req.identity.user_id, None)?;
    let count = UInt::new_saturating(info.count);
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm_json(&info)?,
        count,
        info.etag.to_string(),
        info.version,
    ))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(
    services: AppState,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let info = services.key_backup.version_info(&req.identity.user_id, Some(&req.body.version))?;
    let count = UInt::new_saturating(info.count);
    Ok(get_backup_info::v3::Response::new(algorithm_json(&info)?, count, info.etag.to_string(), info.version))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version(
    services: AppState,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let body = req.body;
    services.key_backup.update_version(&req.identity.user_id, &body.version, body.algorithm.json())?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    services: AppState,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    services.key_backup.delete_version(&req.identity.user_id, &req.body.version)?;
    Ok(delete_backup_version::v3::Response::new())
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys(
    services: AppState,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let body = req.body;
    let uploads: KeysByRoom =
        body.rooms.into_iter().map(|(room_id, room)| (room_id, sessions_upload(room.sessions))).collect();
    let (etag, count) =
        etag_and_count(services.key_backup.add_keys(&req.identity.user_id, &body.version, uploads)?);
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    services: AppState,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let body = req.body;
    let uploads = KeysByRoom::from([(body.room_id, sessions_upload(body.sessions))]);
    let (etag, count) =
        etag_and_count(services.key_backup.add_keys(&req.identity.user_id, &body.version, uploads)?);
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    services: AppState,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let body = req.body;
    let session = BTreeMap::from([(body.session_id, body.session_data.into_json())]);
    let uploads = KeysByRoom::from([(body.room_id, session)]);
    let (etag, count) =
        etag_and_count(services.key_backup.add_keys(&req.identity.user_id, &body.version, uploads)?);
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys(
    services: AppState,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let rooms = services.key_backup.keys(&req.identity.user_id, &req.body.version, None)?;
    let rooms =
        rooms.into_iter().map(|(room_id, sessions)| (room_id, RoomKeyBackup::new(sessions_json(sessions))));
    Ok(get_backup_keys::v3::Response::new(rooms.collect()))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_backup_keys_for_room(
    services: AppState,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let body = req.body;
    let mut rooms = services.key_backup.keys(&req.identity.user_id, &body.version, Some(&body.room_id))?;
    // A room without keys answers an empty map, as Synapse does, not an error.
    let sessions = rooms.remove(&body.room_id).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions_json(sessions)))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_backup_keys_for_session(
    services: AppState,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let body = req.body;
    let data = services.key_backup.session_key(
        &req.identity.user_id,
        &body.version,
        &body.room_id,
        &body.session_id,
    )?;
    Ok(get_backup_keys_for_session::v3::Response::new(Raw::from_json(data)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    services: AppState,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let counts = services.key_backup.delete_keys(&req.identity.user_id, &req.body.version, KeyScope::All)?;
    let (etag, count) = etag_and_count(counts);
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    services: AppState,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let body = req.body;
    let scope = KeyScope::Room(&body.room_id);
    let (etag, count) =
        etag_and_count(services.key_backup.delete_keys(&req.identity.user_id, &body.version, scope)?);
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    services: AppState,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let body = req.body;
    let scope = KeyScope::Session(&body.room_id, &body.session_id);
    let (etag, count) =
        etag_and_count(services.key_backup.delete_keys(&req.identity.user_id, &body.version, scope)?);
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count))
}
