//! Federation: this server's identity towards other servers (keys, signed requests),
//! finding and reaching them (`client`), their keys (`remote_keys`), the queries that need
//! no room protocol (profiles, room aliases), rooms shared with them (`rooms`: inbound
//! transactions, joins, invites and leaves both ways, the reads servers in a room make,
//! backfill), end-to-end encryption across servers (`e2ee`: keys, to-device messages,
//! device lists) and the outbound transactions (`sender`). Everything here is inert with `allow_federation = false`: the
//! client refuses before any connection, and the sender does not start.

pub mod client;
pub mod e2ee;
pub mod remote_keys;
pub mod rooms;
pub mod sender;

use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, UserId};
use serde_json::Value as JsonValue;

use crate::{Error, Result};

pub use client::FederationClient;
pub use e2ee::RemoteE2ee;
pub use remote_keys::RemoteKeys;
pub use rooms::{Handshake, RoomFederation};
pub use sender::FederationSender;

impl FederationClient {
    /// `GET /_matrix/federation/v1/query/profile` of a remote user: the profile fields the
    /// user's server answers (`field` limits them to one).
    pub async fn query_profile(&self, user_id: &UserId, field: Option<&str>) -> Result<JsonValue> {
        let path = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("user_id", user_id.as_str());
            if let Some(field) = field {
                query.append_pair("field", field);
            }
            format!("/_matrix/federation/v1/query/profile?{}", query.finish())
        };
        let answer = self.get_json(user_id.server_name(), &path).await?;
        if !answer.is_object() {
            return Err(Error::Upstream(format!(
                "{} answered a profile that is not an object",
                user_id.server_name()
            )));
        }
        Ok(answer)
    }

    /// `GET /_matrix/federation/v1/query/directory` of a remote alias: its room and the
    /// servers that can join it.
    pub async fn query_directory(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("room_alias", alias.as_str())
            .finish();
        let answer = self
            .get_json(alias.server_name(), &format!("/_matrix/federation/v1/query/directory?{query}"))
            .await?;
        let room_id = answer
            .get("room_id")
            .and_then(JsonValue::as_str)
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| {
                Error::Upstream(format!("{} answered no valid room_id for {alias}", alias.server_name()))
            })?;
        let servers = answer
            .get("servers")
            .and_then(JsonValue::as_array)
            .map(|list| list.iter().filter_map(|s| s.as_str()?.try_into().ok()).collect())
            .unwrap_or_default();
        Ok((room_id, servers))
    }
}
