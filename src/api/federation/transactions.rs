//! Transactions (`ruma::api::federation::transactions`): `PUT /send/{txnId}`, the PDUs and
//! EDUs another server pushes (`RoomFederation::receive_transaction`).

use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `PUT /_matrix/federation/v1/send/{txnId}`: each PDU's outcome; a transaction's origin
/// must be the server that signed the request.
pub async fn send_transaction_message(
    services: AppState,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = &req.identity.server_name;
    if req.body.origin != *origin {
        return Err(Error::forbidden("The transaction's origin is not the server that sent it"));
    }
    let edus: Vec<_> = req.body.edus.iter().map(|edu| edu.json()).collect();
    let results = services
        .room_federation
        .receive_transaction(origin, req.body.transaction_id.as_str(), &req.body.pdus, &edus)
        .await?;
    Ok(send_transaction_message::v1::Response::new(results))
}
