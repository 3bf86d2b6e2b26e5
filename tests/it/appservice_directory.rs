//! The rest of the application service API through HTTP: the application service room
//! directory and `/publicRooms` across networks.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    appservice::{AS_TOKEN, other_registration, registration},
    harness::{TestServer, expect_error},
    rooms::{V3, create_room},
};

/// The room IDs of a `/publicRooms` answer, sorted.
fn rooms_of(body: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = body["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunk: {body}"))
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect();
    rooms.sort();
    rooms
}

fn sorted(rooms: &[&String]) -> Vec<String> {
    let mut rooms: Vec<String> = rooms.iter().map(|r| (*r).clone()).collect();
    rooms.sort();
    rooms
}

fn appservice_list(network: &str, room: &str) -> String {
    format!("{V3}/directory/list/appservice/{network}/{room}")
}

async fn public_rooms(s: &TestServer, token: &str, body: Value) -> Vec<String> {
    let (status, answer) = s.post(&format!("{V3}/publicRooms"), Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    rooms_of(&answer)
}

#[tokio::test]
async fn appservices_publish_rooms_per_network_and_public_rooms_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("bridge.yaml");
    let second = dir.path().join("other.yaml");
    std::fs::write(&first, registration(None, true)).unwrap();
    std::fs::write(&second, other_registration("http://127.0.0.1:9")).unwrap();
    let files = vec![first, second];
    let kept = files.clone();
    let s = TestServer::start_with(move |c| c.app_service_config_files = files).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let main = create_room(&s, &bob, json!({"visibility": "public", "name": "main list"})).await;
    let libera = create_room(&s, &bob, json!({"name": "bridged from libera"})).await;
    let oftc = create_room(&s, &bob, json!({"name": "bridged from oftc"})).await;

    // The appservice publishes rooms in its lists, one per network.
    for (network, room) in [("libera", &libera), ("oftc", &oftc)] {
        let (status, body) =
            s.put(&appservice_list(network, room), Some(AS_TOKEN), json!({"visibility": "public"})).await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({})), "{body}");
    }
    // Another appservice's list of the same network name is its own.
    let (status, body) = s
        .put(&appservice_list("libera", &oftc), Some("other-as-token"), json!({"visibility": "public"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Only appservices: a user is refused (not told the token is unknown), no token is missing.
    expect_error(
        s.put(&appservice_list("libera", &main), Some(&bob.token), json!({"visibility": "public"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&appservice_list("libera", &main), None, json!({"visibility": "public"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // Bad input: an unknown room, a visibility that is neither, no visibility.
    expect_error(
        s.put(
            &appservice_list("libera", "!nowhere:localhost"),
            Some(AS_TOKEN),
            json!({"visibility": "public"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.put(&appservice_list("libera", &main), Some(AS_TOKEN), json!({"visibility": "secret"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, body) = s.put(&appservice_list("libera", &main), Some(AS_TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The server's list alone by default; one network's by instance ID; all with
    // include_all_networks.
    assert_eq!(public_rooms(&s, &bob.token, json!({})).await, [main.clone()]);
    let (status, listed) = s.get(&format!("{V3}/publicRooms"), Some(&bob.token)).await;
    assert_eq!((status, rooms_of(&listed)), (StatusCode::OK, vec![main.clone()]));
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|libera"})).await,
        [libera.clone()]
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await,
        [oftc.clone()]
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"include_all_networks": true})).await,
        sorted(&[&main, &libera, &oftc])
    );
    // With a search term and paging, as for the server's list.
    let (status, page) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"include_all_networks": true, "filter": {"generic_search_term": "bridged"}, "limit": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total_room_count_estimate"], 2, "{page}");
    assert!(page["next_batch"].is_string(), "{page}");
    // A network nobody published in lists nothing; an instance ID that is not one is refused,
    // and so is asking for one network and all of them at once.
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|efnet"})).await.is_empty()
    );
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "nobody|libera"})).await.is_empty()
    );
    expect_error(
        s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"third_party_instance_id": "libera"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, body) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"third_party_instance_id": "bridge|libera", "include_all_networks": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Withdrawn: off that list only.
    let (status, _) =
        s.put(&appservice_list("oftc", &oftc), Some(AS_TOKEN), json!({"visibility": "private"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|oftc"})).await.is_empty());
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await,
        [oftc.clone()]
    );

    // The lists are kept across a restart; those of an appservice no longer registered are
    // not listed.
    let s = s.restart_with(move |c| c.app_service_config_files = vec![kept[0].clone()]).await;
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|libera"})).await,
        [libera.clone()]
    );
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await.is_empty()
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"include_all_networks": true})).await,
        sorted(&[&main, &libera])
    );
}
