//! Read receipts.

use ruma::{
    api::client::receipt::create_receipt::{self, v3::ReceiptType},
    events::receipt::ReceiptThread,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rooms::receipts,
};

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn create_receipt(
    services: AppState,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let body = req.body;
    let user_id = &req.identity.user_id;
    let thread = match &body.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(root) => Some(root.to_string()),
        _ => return Err(Error::invalid_param("Unsupported thread_id")),
    };
    match body.receipt_type {
        ReceiptType::FullyRead => {
            if thread.is_some() {
                return Err(Error::invalid_param("m.fully_read cannot be threaded"));
            }
            services.receipts.set_fully_read(user_id, &body.room_id, &body.event_id)?;
        }
        ReceiptType::Read => services.notifications.read(
            user_id,
            &body.room_id,
            receipts::READ,
            &body.event_id,
            thread.as_deref(),
        )?,
        ReceiptType::ReadPrivate => services.notifications.read(
            user_id,
            &body.room_id,
            receipts::READ_PRIVATE,
            &body.event_id,
            thread.as_deref(),
        )?,
        _ => return Err(Error::invalid_param("Unsupported receipt type")),
    }
    if body.receipt_type != ReceiptType::FullyRead {
        // Apps showing a badge learn that it went down.
        services.push_gateways.read_moved(user_id)?;
    }
    Ok(create_receipt::v3::Response::new())
}
