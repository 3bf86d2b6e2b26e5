//! Server-side search of room events.

use ruma::api::client::search::search_events::{
    self,
    v3::{ResultCategories, ResultRoomEvents},
};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `POST /_matrix/client/v3/search`
pub async fn search_events(
    services: AppState,
    req: Ruma<search_events::v3::Request>,
) -> Result<search_events::v3::Response> {
    let body = req.body;
    let room_events = match &body.search_categories.room_events {
        Some(criteria) => {
            services.search.search(&req.identity.user_id, criteria, body.next_batch.as_deref())?
        }
        None => ResultRoomEvents::new(),
    };
    let mut categories = ResultCategories::new();
    categories.room_events = room_events;
    Ok(search_events::v3::Response::new(categories))
}
