//! The thread list of a room.

use ruma::{
    api::client::threads::get_threads::{self, v1::IncludeThreads},
    serde::Raw,
};

use super::parse_stream_token;
use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::rooms::render::Viewer,
};

/// Default page of `/threads`.
const DEFAULT_LIMIT: usize = 20;

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
pub async fn get_threads(
    services: AppState,
    req: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response> {
    let body = &req.body;
    let viewer = Viewer { user_id: &req.identity.user_id, device_id: req.identity.device_id.as_deref() };
    let participated = matches!(body.include, IncludeThreads::Participated);
    let from = body.from.as_deref().map(parse_stream_token).transpose()?;
    let limit = body.limit.map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    let (chunk, next) = services.history.threads(viewer, &body.room_id, participated, from, limit)?;
    let mut response = get_threads::v1::Response::new(chunk.into_iter().map(Raw::from_json).collect());
    response.next_batch = next.map(|n| format!("s{n}"));
    Ok(response)
}
