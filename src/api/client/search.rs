//! Server-side search of room events.

use ruma::api::client::search::search_events::{
    self,
    v3::{ResultCategories, ResultRoomEvents},
};
use serde_json::{Value as JsonValue, json};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::rooms::render::Viewer,
};

/// `POST /_matrix/client/v3/search`
pub async fn search_events(
    services: AppState,
    req: Ruma<search_events::v3::Request>,
) -> Result<search_events::v3::Response> {
    let body = req.body;
    let room_events = match &body.search_categories.room_events {
        Some(criteria) => {
            let viewer =
                Viewer { user_id: &req.identity.user_id, device_id: req.identity.device_id.as_deref() };
            services.search.search(viewer, criteria, body.next_batch.as_deref())?
        }
        None => ResultRoomEvents::new(),
    };
    let mut categories = ResultCategories::new();
    categories.room_events = room_events;
    Ok(search_events::v3::Response::new(categories))
}

/// Ruma leaves empty lists out, but clients iterate a search's `results` (and read its
/// `highlights`) without checking, as Synapse always sends both: put them back when empty.
pub fn fill_empty_lists(body: &mut JsonValue) {
    let room_events = body.get_mut("search_categories").and_then(|c| c.get_mut("room_events"));
    if let Some(room_events) = room_events.and_then(JsonValue::as_object_mut) {
        room_events.entry("results").or_insert_with(|| json!([]));
        room_events.entry("highlights").or_insert_with(|| json!([]));
    }
}
