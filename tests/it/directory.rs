//! Aliases, the public room directory and reports.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    harness::{TestServer, expect_error},
    rooms::{V3, create_room, join, send_text, state_map},
};

#[tokio::test]
async fn aliases_create_resolve_list_delete() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let alias_path = |a: &str| format!("{V3}/directory/room/{}", a.replace('#', "%23"));

    assert_eq!(
        s.put(&alias_path("#one:localhost"), Some(&alice.token), json!({"room_id": room})).await.0,
        StatusCode::OK
    );
    let (status, body) =
        s.put(&alias_path("#one:localhost"), Some(&alice.token), json!({"room_id": room})).await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::CONFLICT, Some("M_UNKNOWN")));
    expect_error(
        s.put(&alias_path("#x:elsewhere.org"), Some(&alice.token), json!({"room_id": room})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Only members add aliases.
    expect_error(
        s.put(&alias_path("#two:localhost"), Some(&bob.token), json!({"room_id": room})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&alias_path("#two:localhost"), Some(&alice.token), json!({"room_id": "!nope:localhost"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, body) = s.get(&alias_path("#one:localhost"), None).await;
    assert_eq!((status, body["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())));
    expect_error(s.get(&alias_path("#none:localhost"), None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, body) = s.get(&format!("{V3}/rooms/{room}/aliases"), Some(&alice.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"aliases": ["#one:localhost"]})));
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/aliases"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Canonical alias: must exist and point here.
    let canonical = format!("{V3}/rooms/{room}/state/m.room.canonical_alias/");
    expect_error(
        s.put(&canonical, Some(&alice.token), json!({"alias": "#ghost:localhost"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_ALIAS",
    );
    expect_error(
        s.put(&canonical, Some(&alice.token), json!({"alias": "nonsense"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_ALIAS",
    );
    expect_error(
        s.put(&canonical, Some(&alice.token), json!({"alt_aliases": "#one:localhost"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_eq!(
        s.put(
            &canonical,
            Some(&alice.token),
            json!({"alias": "#one:localhost", "alt_aliases": ["#one:localhost"]})
        )
        .await
        .0,
        StatusCode::OK
    );

    // Bob joins; he did not create the alias and has no power: he may not delete it.
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    expect_error(
        s.call(reqwest::Method::DELETE, &alias_path("#one:localhost"), Some(&bob.token), None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, _) =
        s.call(reqwest::Method::DELETE, &alias_path("#one:localhost"), Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(s.get(&alias_path("#one:localhost"), None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // Deleting the alias took it out of the canonical alias event too.
    let state = state_map(&s, &alice, &room).await;
    assert_eq!(state["m.room.canonical_alias|"]["content"], json!({"alt_aliases": []}));
}

#[tokio::test]
async fn public_room_directory() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let name = if i == 3 { "Engineering".to_owned() } else { format!("Room {i}") };
        rooms.push(
            create_room(
                &s,
                &alice,
                json!({"visibility": "public", "name": name, "topic": format!("topic {i}")}),
            )
            .await,
        );
    }
    let unlisted = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    // More members rank first.
    assert_eq!(join(&s, &bob, &rooms[2]).await.0, StatusCode::OK);

    let (status, page) = s.get(&format!("{V3}/publicRooms?limit=2"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total_room_count_estimate"], 5);
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2);
    assert_eq!(chunk[0]["room_id"], rooms[2]);
    assert_eq!(chunk[0]["num_joined_members"], 2);
    // `join_rule` defaults to public and may be left out.
    assert!(chunk[0].get("join_rule").is_none_or(|rule| rule == "public"), "{page}");
    assert_eq!(
        (chunk[0]["world_readable"].clone(), chunk[0]["guest_can_join"].clone()),
        (json!(false), json!(false))
    );
    assert!(page.get("prev_batch").is_none());

    // Walk all pages: every public room exactly once, the unlisted one never.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    loop {
        let query = since.as_ref().map(|t| format!("&since={t}")).unwrap_or_default();
        let (_, page) = s.get(&format!("{V3}/publicRooms?limit=2{query}"), None).await;
        seen.extend(
            page["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()),
        );
        match page["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = rooms.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    assert!(!seen.contains(&unlisted));

    let (status, found) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "engineer"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["name"], "Engineering");
    let (_, all) =
        s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"include_all_networks": true})).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 5);
    // No appservice published anything; an instance ID is `appservice|network`, as Synapse's.
    let (_, bridged) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"third_party_instance_id": "irc|libera"}),
        )
        .await;
    assert_eq!(bridged["chunk"], json!([]));
    expect_error(
        s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"third_party_instance_id": "irc"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{V3}/publicRooms?server=other.example"), None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Visibility: read by anyone, changed only by room moderators.
    let list = format!("{V3}/directory/list/room/{unlisted}");
    expect_error(
        s.put(&list, Some(&bob.token), json!({"visibility": "public"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(s.put(&list, Some(&alice.token), json!({"visibility": "public"})).await.0, StatusCode::OK);
    assert_eq!(s.get(&list, None).await.1, json!({"visibility": "public"}));
    let (_, page) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 6);
    expect_error(
        s.get(&format!("{V3}/directory/list/room/!nope:localhost"), None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn reports_are_stored_for_admins() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let event = send_text(&s, &alice, &room, "1", "offending").await;

    // Bob cannot see the room's events before joining, so cannot report them: to him the
    // event is unknown (the spec's 404 for "not joined to the room").
    let report_event = format!("{V3}/rooms/{room}/report/{event}");
    expect_error(
        s.post(&report_event, Some(&bob.token), json!({"reason": "x"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    assert_eq!(s.post(&report_event, Some(&bob.token), json!({"reason": "rude"})).await.0, StatusCode::OK);
    expect_error(
        s.post(&format!("{V3}/rooms/{room}/report/$missing"), Some(&bob.token), json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/report"), Some(&bob.token), json!({"reason": "bad room"})).await.0,
        StatusCode::OK
    );
    expect_error(
        s.post(&format!("{V3}/rooms/!nope:localhost/report"), Some(&bob.token), json!({"reason": "?"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(
        s.post(&format!("{V3}/users/@alice:localhost/report"), Some(&bob.token), json!({"reason": "spam"}))
            .await
            .0,
        StatusCode::OK
    );
    expect_error(
        s.post(&format!("{V3}/users/@ghost:localhost/report"), Some(&bob.token), json!({"reason": "?"}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // The reports survive a restart, in order, with what was reported.
    let dir = s.stop().await;
    let config = crate::harness::test_config(dir.path());
    let server = conduit::server::Server::build(config).expect("reopens");
    let reports = server.services().reports.all().unwrap();
    let summary: Vec<_> = reports
        .iter()
        .map(|(_, r)| {
            (
                r.event_id.is_some(),
                r.room_id.is_some(),
                r.user_id.as_ref().map(|u| u.to_string()),
                r.reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (true, true, Some("@alice:localhost".to_owned()), Some("rude".to_owned())),
            (false, true, None, Some("bad room".to_owned())),
            (false, false, Some("@alice:localhost".to_owned()), Some("spam".to_owned())),
        ]
    );
    drop(dir);
}
