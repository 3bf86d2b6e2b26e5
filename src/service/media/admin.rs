//! What server admins do with media (Synapse's admin API): list and delete a user's
//! uploads, list the media a room's events use, quarantine (by item, room or user) and
//! protect, delete old or large media in sweeps, per-user statistics. Above `Media` (whose
//! tables hold the flags) and the room and user services that say which media a room or a
//! profile uses; no tables of its own.

use std::{cmp::Ordering, collections::HashSet, sync::Arc};

use ruma::{OwnedUserId, RoomId, ServerName, UserId, events::StateEventType};
use serde_json::{Value as JsonValue, json};

use super::Media;
use crate::{
    Error, Result,
    service::{
        rooms::{events::Events, state::RoomStates},
        users::Users,
    },
    storage::{Direction, tables::MediaRecord},
};

/// A page of a list: the offset to start at, how many, the sort key and its direction.
#[derive(Clone, Debug)]
pub struct Page {
    pub from: usize,
    pub limit: usize,
    pub order_by: Option<String>,
    pub forward: bool,
}

/// One page of a list, with the total and where the next page starts.
pub struct Listing {
    pub items: Vec<JsonValue>,
    pub total: usize,
    pub next_token: Option<usize>,
}

/// The sort keys of a user's media list.
const MEDIA_ORDERS: &[&str] = &[
    "media_id",
    "upload_name",
    "created_ts",
    "last_access_ts",
    "media_length",
    "media_type",
    "quarantined_by",
    "safe_from_quarantine",
];

/// The sort keys of the media statistics.
const STATISTICS_ORDERS: &[&str] = &["user_id", "displayname", "media_length", "media_count"];

/// Events read per scan of a room.
const ROOM_SCAN: usize = 256;

pub struct MediaAdmin {
    media: Arc<Media>,
    users: Arc<Users>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
}

/// A media item as the admin API lists it.
fn media_json(id: &str, record: &MediaRecord) -> JsonValue {
    json!({
        "media_id": id,
        "media_type": record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned()),
        "media_length": record.size,
        "upload_name": record.filename,
        "created_ts": record.created_ms,
        // Downloads are not tracked; the upload is the last access known.
        "last_access_ts": record.created_ms,
        "quarantined_by": record.quarantined_by,
        "safe_from_quarantine": record.protected,
    })
}

fn compare_media(order: &str, a: &(String, MediaRecord), b: &(String, MediaRecord)) -> Ordering {
    let (ia, ra) = a;
    let (ib, rb) = b;
    let by = match order {
        "media_id" => ia.cmp(ib),
        "upload_name" => ra.filename.cmp(&rb.filename),
        "media_length" => ra.size.cmp(&rb.size),
        "media_type" => ra.content_type.cmp(&rb.content_type),
        "quarantined_by" => ra.quarantined_by.cmp(&rb.quarantined_by),
        "safe_from_quarantine" => ra.protected.cmp(&rb.protected),
        // created_ts, last_access_ts
        _ => ra.created_ms.cmp(&rb.created_ms),
    };
    by.then_with(|| ia.cmp(ib))
}

fn check_order(order: Option<&str>, allowed: &[&str]) -> Result<()> {
    match order {
        Some(order) if !allowed.contains(&order) => {
            Err(Error::invalid_param(format!("Unknown value for order_by: {order}")))
        }
        _ => Ok(()),
    }
}

/// The page of `items` (already sorted ascending) a request asks for.
fn page_of<T>(mut items: Vec<T>, page: &Page, render: impl Fn(&T) -> JsonValue) -> Listing {
    if !page.forward {
        items.reverse();
    }
    let total = items.len();
    let shown: Vec<JsonValue> = items.iter().skip(page.from).take(page.limit).map(render).collect();
    let end = page.from.saturating_add(shown.len());
    Listing { items: shown, total, next_token: (end < total).then_some(end) }
}

/// Every `mxc://` URI an event's content names as its file or thumbnail.
fn mxc_uris(kind: &str, content: &JsonValue, out: &mut Vec<String>) {
    let mut take = |value: Option<&JsonValue>| {
        if let Some(uri) = value.and_then(JsonValue::as_str).filter(|u| u.starts_with("mxc://")) {
            out.push(uri.to_owned());
        }
    };
    take(content.get("url"));
    take(content.pointer("/file/url"));
    take(content.pointer("/info/thumbnail_url"));
    take(content.pointer("/info/thumbnail_file/url"));
    if kind == "m.room.member" {
        take(content.get("avatar_url"));
    }
}

impl MediaAdmin {
    pub fn new(media: Arc<Media>, users: Arc<Users>, events: Arc<Events>, states: Arc<RoomStates>) -> Self {
        Self { media, users, events, states }
    }

    /// `GET /_synapse/admin/v1/users/{userId}/media`: the user's uploads, oldest first by
    /// default.
    pub fn user_media(&self, user_id: &UserId, page: &Page) -> Result<Listing> {
        check_order(page.order_by.as_deref(), MEDIA_ORDERS)?;
        let mut items = self.media.records_where(|_, record| record.uploader == user_id)?;
        let order = page.order_by.as_deref().unwrap_or("created_ts");
        items.sort_by(|a, b| compare_media(order, a, b));
        Ok(page_of(items, page, |(id, record)| media_json(id, record)))
    }

    /// `DELETE /_synapse/admin/v1/users/{userId}/media`: delete the page of the user's
    /// uploads that the same parameters would list. Answers the IDs deleted.
    pub async fn delete_user_media(&self, user_id: &UserId, page: &Page) -> Result<Vec<String>> {
        let listing = self.user_media(user_id, page)?;
        let ids =
            listing.items.iter().filter_map(|item| item["media_id"].as_str().map(str::to_owned)).collect();
        self.media.delete_ids(ids).await
    }

    /// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`: one item, protected or not.
    pub async fn delete_one(&self, server_name: &ServerName, media_id: &str) -> Result<Vec<String>> {
        self.media.record_of(server_name, media_id)?;
        self.media.delete_ids(vec![media_id.to_owned()]).await
    }

    /// `POST /_synapse/admin/v1/media/delete?before_ts&size_gt&keep_profiles`: local media
    /// uploaded before `before_ts` and larger than `size_gt` bytes, except protected media
    /// and (with `keep_profiles`) media used as a user's or a room's avatar.
    pub async fn delete_old(&self, before_ts: u64, size_gt: u64, keep_profiles: bool) -> Result<Vec<String>> {
        let kept = if keep_profiles { self.avatars()? } else { HashSet::new() };
        let ids = self
            .media
            .records_where(|id, record| {
                record.created_ms < before_ts
                    && record.size > size_gt
                    && !record.protected
                    && !kept.contains(id)
            })?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.media.delete_ids(ids).await
    }

    /// The local media IDs used as avatars: users' profiles and rooms' `m.room.avatar`.
    fn avatars(&self) -> Result<HashSet<String>> {
        let mut ids = HashSet::new();
        for (_, profile) in self.users.all_profiles()? {
            if let Some(id) = profile.avatar_url.as_ref().and_then(|u| self.media.local_media_id(u.as_str()))
            {
                ids.insert(id.to_owned());
            }
        }
        for room_id in self.states.room_ids()? {
            let Some(event_id) =
                self.states.current_state_event_id(&room_id, &StateEventType::RoomAvatar, "")?
            else {
                continue;
            };
            if let Some(event) = self.events.get(&event_id)? {
                let content = event.pdu.content_value();
                if let Some(id) =
                    content.get("url").and_then(JsonValue::as_str).and_then(|u| self.media.local_media_id(u))
                {
                    ids.insert(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    /// `GET /_synapse/admin/v1/room/{roomId}/media`: the `mxc://` URIs the room's events
    /// name, local and remote (there is no remote media without federation, but events may
    /// name it), each once, in the order they were first used.
    pub fn room_media(&self, room_id: &RoomId) -> Result<(Vec<String>, Vec<String>)> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let mut uris = Vec::new();
        let mut cursor = None;
        loop {
            let events = self.events.room_events(room_id, cursor, Direction::Forward, ROOM_SCAN)?;
            let Some(last) = events.last() else { break };
            cursor = Some(last.stream);
            for event in &events {
                mxc_uris(&event.pdu.kind.to_string(), &event.pdu.content_value(), &mut uris);
            }
        }
        let mut seen = HashSet::new();
        uris.retain(|u| seen.insert(u.clone()));
        let (local, remote) = uris.into_iter().partition(|u| self.media.local_media_id(u).is_some());
        Ok((local, remote))
    }

    /// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}` (or `unquarantine`).
    pub fn quarantine_one(
        &self,
        admin: &UserId,
        server_name: &ServerName,
        media_id: &str,
        quarantine: bool,
    ) -> Result<()> {
        self.media.record_of(server_name, media_id)?;
        self.media.set_quarantine(&[media_id.to_owned()], quarantine.then_some(admin), false)?;
        Ok(())
    }

    /// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`: the local media the room's
    /// events use, except protected items. Answers how many were quarantined.
    pub fn quarantine_room(&self, admin: &UserId, room_id: &RoomId) -> Result<u64> {
        let (local, _) = self.room_media(room_id)?;
        let ids: Vec<String> =
            local.iter().filter_map(|u| self.media.local_media_id(u)).map(str::to_owned).collect();
        self.media.set_quarantine(&ids, Some(admin), true)
    }

    /// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: the user's uploads, except
    /// protected items.
    pub fn quarantine_user(&self, admin: &UserId, user_id: &UserId) -> Result<u64> {
        let ids: Vec<String> = self
            .media
            .records_where(|_, record| record.uploader == user_id)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        self.media.set_quarantine(&ids, Some(admin), true)
    }

    /// `POST /_synapse/admin/v1/media/{protect|unprotect}/{mediaId}`.
    pub fn protect(&self, media_id: &str, protected: bool) -> Result<()> {
        self.media.set_protected(media_id, protected)
    }

    /// `GET /_synapse/admin/v1/statistics/users/media`: per uploader, how many items and
    /// bytes, optionally only uploads in `[from_ts, until_ts)` and users whose ID or display
    /// name contains `search_term`.
    pub fn statistics(
        &self,
        page: &Page,
        from_ts: Option<u64>,
        until_ts: Option<u64>,
        search_term: Option<&str>,
    ) -> Result<Listing> {
        check_order(page.order_by.as_deref(), STATISTICS_ORDERS)?;
        let records = self.media.records_where(|_, record| {
            from_ts.is_none_or(|from| record.created_ms >= from)
                && until_ts.is_none_or(|until| record.created_ms < until)
        })?;
        let mut by_user: std::collections::BTreeMap<OwnedUserId, (u64, u64)> = Default::default();
        for (_, record) in records {
            let entry = by_user.entry(record.uploader).or_default();
            entry.0 += 1;
            entry.1 += record.size;
        }
        let needle = search_term.map(str::to_lowercase);
        let mut rows = Vec::new();
        for (user_id, (count, length)) in by_user {
            let displayname = self.users.profile(&user_id)?.and_then(|p| p.displayname);
            if let Some(needle) = &needle {
                let hit = user_id.as_str().to_lowercase().contains(needle.as_str())
                    || displayname.as_deref().is_some_and(|d| d.to_lowercase().contains(needle.as_str()));
                if !hit {
                    continue;
                }
            }
            rows.push((user_id, displayname, count, length));
        }
        let order = page.order_by.as_deref().unwrap_or("user_id");
        rows.sort_by(|a, b| {
            let by = match order {
                "displayname" => a.1.cmp(&b.1),
                "media_length" => a.3.cmp(&b.3),
                "media_count" => a.2.cmp(&b.2),
                _ => Ordering::Equal,
            };
            by.then_with(|| a.0.cmp(&b.0))
        });
        Ok(page_of(rows, page, |(user_id, displayname, count, length)| {
            json!({
                "user_id": user_id,
                "displayname": displayname,
                "media_count": count,
                "media_length": length,
            })
        }))
    }
}
