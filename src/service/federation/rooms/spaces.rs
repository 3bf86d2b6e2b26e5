//! A local user's space walk through rooms this server does not have: one level of the
//! space (`GET /_matrix/federation/v1/hierarchy/{roomId}`) asked of the servers the
//! parent's `m.space.child` event names, in turn, each answer kept for a few minutes so
//! that the pages of one walk, and walks close together, ask once.

use std::{future::Future, pin::Pin};

use ruma::{OwnedServerName, RoomId};
use serde_json::Value as JsonValue;

use super::{RoomFederation, encode};
use crate::service::rooms::hierarchy::{RemoteLevel, RemoteSpaces};

/// How long another server's answer for a level is reused.
pub(super) const LEVEL_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// Servers asked for one level at most.
const SERVERS_ASKED: usize = 3;

impl RoomFederation {
    async fn remote_level(
        &self,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
    ) -> Option<RemoteLevel> {
        let key = (room_id.to_owned(), suggested_only);
        let now = self.clock.now_ms();
        {
            let mut levels = self.space_levels.lock().unwrap_or_else(|p| p.into_inner());
            levels.retain(|_, (_, expires)| *expires > now);
            if let Some((level, _)) = levels.get(&key) {
                return Some(level.clone());
            }
        }
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
            encode(room_id.as_str())
        );
        for server in via.iter().filter(|server| **server != self.server_name).take(SERVERS_ASKED) {
            match self.client.get_json(server, &path).await {
                Ok(answer) if answer.get("room").is_some_and(JsonValue::is_object) => {
                    let children =
                        answer.get("children").and_then(JsonValue::as_array).cloned().unwrap_or_default();
                    let level = RemoteLevel { room: answer["room"].clone(), children };
                    self.space_levels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, (level.clone(), now + LEVEL_LIFETIME_MS));
                    return Some(level);
                }
                Ok(_) => tracing::debug!(%server, %room_id, "a hierarchy answer without its room"),
                Err(e) => tracing::debug!(%server, %room_id, error = %e, "a space level was not had"),
            }
        }
        None
    }
}

impl RemoteSpaces for RoomFederation {
    fn level<'a>(
        &'a self,
        room_id: &'a RoomId,
        via: &'a [OwnedServerName],
        suggested_only: bool,
    ) -> Pin<Box<dyn Future<Output = Option<RemoteLevel>> + Send + 'a>> {
        Box::pin(self.remote_level(room_id, via, suggested_only))
    }
}
