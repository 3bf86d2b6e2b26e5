//! `/context`: an event and the events around it.

use ruma::{api::client::context::get_context, serde::Raw};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::rooms::render::Viewer,
};

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub async fn get_context(
    services: AppState,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let body = req.body;
    let viewer = Viewer { user_id: &req.identity.user_id, device_id: req.identity.device_id.as_deref() };
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let page = services.history.context(viewer, &body.room_id, &body.event_id, limit, &body.filter)?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(format!("s{}", page.start));
    response.end = Some(format!("s{}", page.end));
    response.events_before = page.before.into_iter().map(Raw::from_json).collect();
    response.event = Some(Raw::from_json(page.event));
    response.events_after = page.after.into_iter().map(Raw::from_json).collect();
    response.state = page.state.into_iter().map(Raw::from_json).collect();
    Ok(response)
}
