//! Synapse's admin API for rooms, media, event reports and background jobs, through HTTP:
//! the room list and details, members, state and history regardless of membership,
//! blocking, joining users, raising a room admin, forward extremities, room deletion (now
//! and scheduled, with a replacement room, block and purge, members told in `/sync`),
//! media listing, quarantine, protection and deletion, event reports, the task list; and
//! that none of it answers a user who is not a server admin.

use conduit::service::clock::Clock as _;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::sync,
};

const A1: &str = "/_synapse/admin/v1";
const A2: &str = "/_synapse/admin/v2";

async fn admin(s: &TestServer) -> Session {
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    s.login("root", "pw-root-12345", None).await
}

async fn ok(result: (StatusCode, Value)) -> Value {
    let (status, body) = result;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn call(s: &TestServer, method: Method, path: &str, who: &Session, body: Option<Value>) -> Value {
    ok(s.call(method, path, Some(&who.token), body).await).await
}

async fn set_state(s: &TestServer, who: &Session, room: &str, kind: &str, key: &str, content: Value) {
    ok(s.put(&format!("{V3}/rooms/{room}/state/{kind}/{key}"), Some(&who.token), content).await).await;
}

async fn upload(s: &TestServer, who: &Session, bytes: &[u8], content_type: &str) -> String {
    let resp = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .header(header::CONTENT_TYPE, content_type)
        .bearer_auth(&who.token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["content_uri"].as_str().unwrap().to_owned()
}

async fn download_status(s: &TestServer, who: &Session, mxc: &str) -> StatusCode {
    let path = mxc.trim_start_matches("mxc://");
    s.http
        .get(format!("{}/_matrix/client/v1/media/download/{path}", s.base))
        .bearer_auth(&who.token)
        .send()
        .await
        .unwrap()
        .status()
}

fn media_id(mxc: &str) -> &str {
    mxc.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn rooms_are_listed_sorted_searched_and_paged() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let big = create_room(
        &s,
        &alice,
        json!({"name": "Zebra talk", "preset": "public_chat", "room_alias_name": "zebra"}),
    )
    .await;
    join(&s, &bob, &big).await;
    let small = create_room(&s, &alice, json!({"name": "apple pie", "preset": "private_chat"})).await;
    let unnamed = create_room(&s, &bob, json!({})).await;
    ok(s.put(
        &format!("{V3}/directory/list/room/{big}"),
        Some(&alice.token),
        json!({"visibility": "public"}),
    )
    .await)
    .await;

    // By name (the default): ascending, case-sensitive as Synapse's database orders, unnamed last.
    let list = call(&s, Method::GET, &format!("{A1}/rooms"), &root, None).await;
    assert_eq!(list["total_rooms"], 3, "{list}");
    assert_eq!(list["offset"], 0);
    assert!(list.get("next_batch").is_none() && list.get("prev_batch").is_none(), "{list}");
    let ids: Vec<&str> =
        list["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [big.as_str(), small.as_str(), unnamed.as_str()]);
    let entry = &list["rooms"][0];
    assert_eq!(entry["name"], "Zebra talk");
    assert_eq!(entry["canonical_alias"], "#zebra:localhost");
    assert_eq!(entry["joined_members"], 2);
    assert_eq!(entry["joined_local_members"], 2);
    assert_eq!(entry["creator"], alice.user_id);
    assert_eq!(entry["public"], true);
    assert_eq!(entry["join_rules"], "public");
    assert_eq!(entry["federatable"], true);
    assert!(entry["version"].is_string() && entry["state_events"].as_u64().unwrap() >= 6, "{entry}");
    assert!(entry.get("encryption").is_some() && entry.get("room_type").is_some(), "{entry}");

    // Counts sort largest first; dir=b reverses.
    let by_size = call(&s, Method::GET, &format!("{A1}/rooms?order_by=joined_members"), &root, None).await;
    assert_eq!(by_size["rooms"][0]["room_id"], big.as_str());
    let reversed = call(&s, Method::GET, &format!("{A1}/rooms?order_by=name&dir=b"), &root, None).await;
    assert_eq!(reversed["rooms"][0]["room_id"], unnamed.as_str());

    // Paging: offsets, with next and prev batches.
    let page = call(&s, Method::GET, &format!("{A1}/rooms?limit=1&from=1"), &root, None).await;
    assert_eq!(page["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(
        (page["offset"].clone(), page["next_batch"].clone(), page["prev_batch"].clone()),
        (json!(1), json!(2), json!(0))
    );

    // Search: name or alias substring (any case), or the exact room ID; other filters.
    for (term, expect) in [("APPLE", &small), ("zebr", &big), (unnamed.as_str(), &unnamed)] {
        let found =
            call(&s, Method::GET, &format!("{A1}/rooms?search_term={}", urlencode(term)), &root, None).await;
        assert_eq!(found["total_rooms"], 1, "{term}: {found}");
        assert_eq!(found["rooms"][0]["room_id"], expect.as_str());
    }
    let public = call(&s, Method::GET, &format!("{A1}/rooms?public_rooms=true"), &root, None).await;
    assert_eq!(public["total_rooms"], 1);
    expect_error(
        s.get(&format!("{A1}/rooms?order_by=colour"), Some(&root.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{A1}/rooms?dir=x"), Some(&root.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Details add topic, avatar, devices and forgotten.
    set_state(&s, &alice, &small, "m.room.topic", "", json!({"topic": "pies"})).await;
    let details = call(&s, Method::GET, &format!("{A1}/rooms/{small}"), &root, None).await;
    assert_eq!(details["topic"], "pies");
    assert_eq!(details["name"], "apple pie");
    assert_eq!(details["joined_local_devices"], 1);
    assert_eq!(details["forgotten"], false);
    assert_eq!(details["join_rules"], "invite");
    expect_error(
        s.get(&format!("{A1}/rooms/!nope:localhost"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{A1}/rooms/not-a-room"), Some(&root.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn members_state_messages_and_context_are_read_whatever_the_admins_membership() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    // A private room whose history only members see.
    let room = create_room(&s, &alice, json!({"preset": "private_chat", "invite": [bob.user_id]})).await;
    join(&s, &bob, &room).await;
    set_state(&s, &alice, &room, "m.room.history_visibility", "", json!({"history_visibility": "joined"}))
        .await;
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(send_text(&s, &alice, &room, &format!("t{n}"), &format!("secret {n}")).await);
    }
    // The client API refuses the admin, who is not in the room.
    assert_eq!(
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b"), Some(&root.token)).await.0,
        StatusCode::FORBIDDEN
    );

    let members = call(&s, Method::GET, &format!("{A1}/rooms/{room}/members"), &root, None).await;
    assert_eq!(members, json!({"members": [alice.user_id, bob.user_id], "total": 2}));

    let state = call(&s, Method::GET, &format!("{A1}/rooms/{room}/state"), &root, None).await;
    let kinds: Vec<&str> =
        state["state"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"m.room.create") && kinds.contains(&"m.room.history_visibility"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "m.room.member").count(), 2);

    // Backwards by default, paged with tokens like the client API's.
    let page = call(&s, Method::GET, &format!("{A1}/rooms/{room}/messages?limit=2"), &root, None).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["secret 4", "secret 3"]);
    let end = page["end"].as_str().unwrap();
    let next =
        call(&s, Method::GET, &format!("{A1}/rooms/{room}/messages?limit=2&from={end}"), &root, None).await;
    assert_eq!(next["chunk"][0]["content"]["body"], "secret 2");
    let forward =
        call(&s, Method::GET, &format!("{A1}/rooms/{room}/messages?dir=f&limit=1"), &root, None).await;
    assert_eq!(forward["chunk"][0]["type"], "m.room.create");
    let filter = urlencode(&json!({"types": ["m.room.message"]}).to_string());
    let filtered = call(
        &s,
        Method::GET,
        &format!("{A1}/rooms/{room}/messages?dir=f&limit=1&filter={filter}"),
        &root,
        None,
    )
    .await;
    assert_eq!(filtered["chunk"][0]["content"]["body"], "secret 0");

    let context =
        call(&s, Method::GET, &format!("{A1}/rooms/{room}/context/{}?limit=2", sent[2]), &root, None).await;
    assert_eq!(context["event"]["event_id"], sent[2].as_str());
    assert_eq!(context["events_before"][0]["event_id"], sent[1].as_str());
    assert_eq!(context["events_after"][0]["event_id"], sent[3].as_str());
    assert!(context["start"].is_string() && context["end"].is_string() && context["state"].is_array());
    expect_error(
        s.get(&format!("{A1}/rooms/{room}/context/$missing"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{A1}/rooms/!gone:localhost/messages"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // One forward extremity: the latest event, truthfully; deleting leaves it.
    let extremities =
        call(&s, Method::GET, &format!("{A1}/rooms/{room}/forward_extremities"), &root, None).await;
    assert_eq!(extremities["count"], 1);
    assert_eq!(extremities["results"][0]["event_id"], sent[4].as_str());
    assert!(extremities["results"][0]["depth"].is_u64() && extremities["results"][0]["received_ts"].is_u64());
    let deleted =
        call(&s, Method::DELETE, &format!("{A1}/rooms/{room}/forward_extremities"), &root, None).await;
    assert_eq!(deleted, json!({"deleted": 0}));
}

#[tokio::test]
async fn blocked_rooms_refuse_joins_invites_and_knocks() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let block = format!("{A1}/rooms/{room}/block");
    assert_eq!(call(&s, Method::GET, &block, &root, None).await, json!({"block": false}));
    assert_eq!(
        call(&s, Method::PUT, &block, &root, Some(json!({"block": true}))).await,
        json!({"block": true})
    );
    assert_eq!(
        call(&s, Method::GET, &block, &root, None).await,
        json!({"block": true, "user_id": root.user_id})
    );

    let refused = expect_error(join(&s, &bob, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(refused["error"], "This room has been blocked on this server");
    expect_error(
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": bob.user_id}))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // A room not known yet can be blocked too.
    assert_eq!(
        call(
            &s,
            Method::PUT,
            &format!("{A1}/rooms/!future:localhost/block"),
            &root,
            Some(json!({"block": true}))
        )
        .await["block"],
        true
    );
    expect_error(
        s.put(&block, Some(&root.token), json!({"block": "yes"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    call(&s, Method::PUT, &block, &root, Some(json!({"block": false}))).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
}

#[tokio::test]
async fn admins_join_users_to_rooms_and_make_them_room_admins() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let public = create_room(&s, &alice, json!({"preset": "public_chat", "room_alias_name": "town"})).await;
    let private = create_room(&s, &alice, json!({"preset": "private_chat"})).await;

    // Public room, by alias.
    let joined = call(
        &s,
        Method::POST,
        &format!("{A1}/join/{}", urlencode("#town:localhost")),
        &root,
        Some(json!({"user_id": bob.user_id})),
    )
    .await;
    assert_eq!(joined, json!({"room_id": public}));
    let members = call(&s, Method::GET, &format!("{A1}/rooms/{public}/members"), &root, None).await;
    assert!(members["members"].as_array().unwrap().contains(&json!(bob.user_id)));

    // A private room needs the admin in it to invite first.
    expect_error(
        s.post(&format!("{A1}/join/{private}"), Some(&root.token), json!({"user_id": bob.user_id})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.post(&format!("{A1}/join/{private}"), Some(&root.token), json!({"user_id": "@x:elsewhere"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{A1}/join/{private}"), Some(&root.token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );

    // make_room_admin: carol, not in the private room, is invited by alice (its only
    // admin), joins, and gets alice's level from alice's power levels event.
    call(
        &s,
        Method::POST,
        &format!("{A1}/rooms/{private}/make_room_admin"),
        &root,
        Some(json!({"user_id": carol.user_id})),
    )
    .await;
    let power =
        call(&s, Method::GET, &format!("{V3}/rooms/{private}/state/m.room.power_levels/"), &carol, None)
            .await;
    assert_eq!(power["users"][&carol.user_id], 100, "{power}");
    let state = call(&s, Method::GET, &format!("{A1}/rooms/{private}/state"), &root, None).await;
    let levels =
        state["state"].as_array().unwrap().iter().find(|e| e["type"] == "m.room.power_levels").unwrap();
    assert_eq!(levels["sender"], alice.user_id);
    // Now carol may act as an admin of the room.
    set_state(&s, &carol, &private, "m.room.name", "", json!({"name": "carol's now"})).await;
    // Without a local member who may change power levels, there is nobody to do it.
    let orphan = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    ok(s.post(&format!("{V3}/rooms/{orphan}/leave"), Some(&bob.token), json!({})).await).await;
    expect_error(
        s.post(
            &format!("{A1}/rooms/{orphan}/make_room_admin"),
            Some(&root.token),
            json!({"user_id": carol.user_id}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

/// The rooms section of a sync, for one room: which part it is in.
fn sync_section(body: &Value, room: &str) -> Option<&'static str> {
    ["join", "leave", "invite"].into_iter().find(|part| body["rooms"][part].get(room).is_some())
}

#[tokio::test]
async fn deleting_a_room_moves_members_blocks_it_and_purges_it_from_storage() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mallory = s.register("mallory", "pw-mallory-12").await;
    let room = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "bad", "name": "Bad place"}),
    )
    .await;
    join(&s, &bob, &room).await;
    ok(s.put(
        &format!("{V3}/directory/list/room/{room}"),
        Some(&alice.token),
        json!({"visibility": "public"}),
    )
    .await)
    .await;
    let first = send_text(&s, &alice, &room, "m1", "contraband unicorn").await;
    let reply = ok(s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/m2"),
            Some(&bob.token),
            json!({"msgtype": "m.text", "body": "thread unicorn", "m.relates_to": {"rel_type": "m.thread", "event_id": first}}),
        )
        .await)
    .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{reply}"), Some(&alice.token), json!({})).await)
        .await;
    ok(s.put(&format!("{V3}/user/{}/rooms/{room}/tags/u.work", bob.user_id), Some(&bob.token), json!({}))
        .await)
    .await;
    ok(s.post(&format!("{V3}/rooms/{room}/report/{first}"), Some(&bob.token), json!({"reason": "illegal"}))
        .await)
    .await;
    let search = json!({"search_categories": {"room_events": {"search_term": "unicorn"}}});
    let found = ok(s.post(&format!("{V3}/search"), Some(&bob.token), search.clone()).await).await;
    assert_eq!(found["search_categories"]["room_events"]["count"], 2, "{found}");
    let bob_since = sync(&s, &bob, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(sync_section(&sync(&s, &bob, "timeout=0").await, &room), Some("join"));

    let outcome = call(
        &s,
        Method::DELETE,
        &format!("{A1}/rooms/{room}"),
        &root,
        Some(json!({"new_room_user_id": root.user_id, "room_name": "Gone", "message": "Moved you here", "block": true, "purge": true})),
    )
    .await;
    let mut kicked: Vec<&str> =
        outcome["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    kicked.sort_unstable();
    assert_eq!(kicked, [alice.user_id.as_str(), bob.user_id.as_str()]);
    assert_eq!(outcome["failed_to_kick_users"], json!([]));
    assert_eq!(outcome["local_aliases"], json!(["#bad:localhost"]));
    let new_room = outcome["new_room_id"].as_str().unwrap().to_owned();

    // Bob's client, syncing from before, is told he left; he is in the new room, which has
    // the message, and the alias now leads there.
    let after = sync(&s, &bob, &format!("since={bob_since}&timeout=0")).await;
    assert_eq!(sync_section(&after, &room), Some("leave"), "{after}");
    let leave = &after["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(
        leave.as_array().unwrap().iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id
            && e["content"]["membership"] == "leave"),
        "{leave}"
    );
    assert_eq!(sync_section(&after, &new_room), Some("join"), "{after}");
    let new_messages =
        ok(s.get(&format!("{V3}/rooms/{new_room}/messages?dir=b&limit=5"), Some(&bob.token)).await).await;
    assert!(
        new_messages["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "Moved you here")
    );
    let alias = ok(s.get(&format!("{V3}/directory/room/{}", urlencode("#bad:localhost")), None).await).await;
    assert_eq!(alias["room_id"], new_room.as_str());
    let new_details = call(&s, Method::GET, &format!("{A1}/rooms/{new_room}"), &root, None).await;
    assert_eq!(new_details["name"], "Gone");

    // Gone from the admin API, the directory, search and a fresh sync.
    expect_error(
        s.get(&format!("{A1}/rooms/{room}"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let directory = ok(s.get(&format!("{V3}/publicRooms"), None).await).await;
    assert!(
        !directory["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room.as_str()),
        "{directory}"
    );
    let found = ok(s.post(&format!("{V3}/search"), Some(&bob.token), search).await).await;
    assert_eq!(found["search_categories"]["room_events"]["count"], 0, "{found}");
    let fresh = sync(&s, &bob, "timeout=0").await;
    assert_eq!(sync_section(&fresh, &room), None, "{fresh}");
    assert_eq!(
        s.get(&format!("{V3}/rooms/{room}/event/{first}"), Some(&alice.token)).await.0,
        StatusCode::NOT_FOUND
    );
    let tags =
        ok(s.get(&format!("{V3}/user/{}/rooms/{room}/tags", bob.user_id), Some(&bob.token)).await).await;
    assert_eq!(tags["tags"], json!({}));

    // In storage: no room record, state, members, events, relations or receipts.
    let sv = &s.services;
    let room_id = ruma::RoomId::parse(&room).unwrap();
    assert!(sv.room_states.room(&room_id).unwrap().is_none());
    assert!(sv.memberships.members(&room_id).unwrap().is_empty());
    for event in [&first, &reply] {
        assert!(sv.events.get(&ruma::EventId::parse(event).unwrap()).unwrap().is_none(), "{event} kept");
    }
    assert!(
        sv.events.room_events(&room_id, None, conduit::storage::Direction::Forward, 10).unwrap().is_empty()
    );
    assert!(sv.receipts.of_user(&room_id, &ruma::UserId::parse(&alice.user_id).unwrap()).unwrap().is_empty());
    assert_eq!(sv.events.last_position(&room_id).unwrap(), 0);

    // Blocked: the room cannot be joined again; someone who never was in it neither.
    expect_error(join(&s, &mallory, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // Forgetting the purged room clears the last row; it no longer shows with include_leave.
    ok(s.post(&format!("{V3}/rooms/{room}/forget"), Some(&bob.token), json!({})).await).await;
    let filter = urlencode(&json!({"room": {"include_leave": true}}).to_string());
    let archived = sync(&s, &bob, &format!("timeout=0&filter={filter}")).await;
    assert_eq!(sync_section(&archived, &room), None);

    // The report stays, its event gone.
    let reports = call(&s, Method::GET, &format!("{A1}/event_reports"), &root, None).await;
    let id = reports["event_reports"][0]["id"].as_u64().unwrap();
    let report = call(&s, Method::GET, &format!("{A1}/event_reports/{id}"), &root, None).await;
    assert_eq!(report["event_json"], Value::Null);
    assert_eq!(report["sender"], alice.user_id);

    // An unknown room: 404 unless it is to be blocked.
    expect_error(
        s.call(Method::DELETE, &format!("{A1}/rooms/!never:localhost"), Some(&root.token), Some(json!({})))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.call(
            Method::DELETE,
            &format!("{A1}/rooms/{new_room}"),
            Some(&root.token),
            Some(json!({"new_room_user_id": "@nobody:localhost"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn deleting_without_purge_keeps_the_room_and_members_see_the_leave() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    send_text(&s, &alice, &room, "1", "still here").await;
    let since = sync(&s, &alice, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let outcome =
        call(&s, Method::DELETE, &format!("{A1}/rooms/{room}"), &root, Some(json!({"purge": false}))).await;
    assert_eq!(outcome["kicked_users"], json!([alice.user_id]));
    assert_eq!(outcome["new_room_id"], Value::Null);
    let after = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert_eq!(sync_section(&after, &room), Some("leave"));
    // Not purged: the admin still reads it, with nobody joined; not blocked: alice may return.
    let details = call(&s, Method::GET, &format!("{A1}/rooms/{room}"), &root, None).await;
    assert_eq!(details["joined_members"], 0);
    let empty = call(&s, Method::GET, &format!("{A1}/rooms?empty_rooms=true"), &root, None).await;
    assert_eq!(empty["rooms"][0]["room_id"], room.as_str());
    assert_eq!(join(&s, &alice, &room).await.0, StatusCode::OK);
}

#[tokio::test]
async fn scheduled_deletions_report_their_status_and_are_the_task_list() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for n in 0..20 {
        send_text(&s, &alice, &room, &format!("t{n}"), "words").await;
    }
    let since = sync(&s, &alice, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let answer =
        call(&s, Method::DELETE, &format!("{A2}/rooms/{room}"), &root, Some(json!({"block": true}))).await;
    let delete_id = answer["delete_id"].as_str().unwrap().to_owned();

    // Poll until the task ends (it runs on its own task, not on a timer).
    let status_path = format!("{A2}/rooms/delete_status/{delete_id}");
    let mut status = Value::Null;
    for _ in 0..500 {
        status = call(&s, Method::GET, &status_path, &root, None).await;
        if status["status"] == "complete" || status["status"] == "failed" {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["shutdown_room"]["kicked_users"], json!([alice.user_id]));
    let by_room = call(&s, Method::GET, &format!("{A2}/rooms/{room}/delete_status"), &root, None).await;
    assert_eq!(by_room["results"][0]["delete_id"], delete_id.as_str());
    assert_eq!(by_room["results"][0]["status"], "complete");
    expect_error(
        s.get(&format!("{A2}/rooms/delete_status/nope"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let after = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert_eq!(sync_section(&after, &room), Some("leave"), "{after}");
    expect_error(
        s.get(&format!("{A1}/rooms/{room}"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(call(&s, Method::GET, &format!("{A1}/rooms/{room}/block"), &root, None).await["block"], true);

    let tasks = call(&s, Method::GET, &format!("{A1}/scheduled_tasks"), &root, None).await;
    let task = &tasks["scheduled_tasks"][0];
    assert_eq!(
        (task["id"].as_str(), task["action"].as_str(), task["status"].as_str(), task["resource_id"].as_str()),
        (Some(delete_id.as_str()), Some("shutdown_and_purge_room"), Some("complete"), Some(room.as_str()))
    );
    assert!(task["timestamp_ms"].is_u64());
    let none = call(&s, Method::GET, &format!("{A1}/scheduled_tasks?job_status=active"), &root, None).await;
    assert_eq!(none["scheduled_tasks"], json!([]));
    let none = call(&s, Method::GET, &format!("{A1}/scheduled_tasks?action_name=other"), &root, None).await;
    assert_eq!(none["scheduled_tasks"], json!([]));

    // Nothing is updated in the background while the server serves.
    let updates = call(&s, Method::GET, &format!("{A1}/background_updates/status"), &root, None).await;
    assert_eq!(updates, json!({"enabled": true, "current_updates": {}}));

    // The record outlives a restart.
    let s = s.restart().await;
    let status = call(&s, Method::GET, &status_path, &root, None).await;
    assert_eq!(status["status"], "complete");
}

#[tokio::test]
async fn media_is_listed_quarantined_protected_and_deleted() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let a1 = upload(&s, &alice, b"first file", "text/plain").await;
    s.clock.advance_ms(10_000);
    let a2 = upload(&s, &alice, b"the second, longer file", "application/octet-stream").await;
    s.clock.advance_ms(10_000);
    let a3 = upload(&s, &alice, b"avatar bytes", "image/png").await;
    let b1 = upload(&s, &bob, b"bob's", "text/plain").await;
    ok(s.put(
        &format!("{V3}/profile/{}/avatar_url", alice.user_id),
        Some(&alice.token),
        json!({"avatar_url": a3}),
    )
    .await)
    .await;

    let listed = call(&s, Method::GET, &format!("{A1}/users/{}/media", alice.user_id), &root, None).await;
    assert_eq!(listed["total"], 3);
    let ids: Vec<&str> =
        listed["media"].as_array().unwrap().iter().map(|m| m["media_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [media_id(&a1), media_id(&a2), media_id(&a3)]);
    let item = &listed["media"][0];
    assert_eq!((item["media_type"].as_str(), item["media_length"].as_u64()), (Some("text/plain"), Some(10)));
    assert_eq!(
        (item["quarantined_by"].clone(), item["safe_from_quarantine"].clone()),
        (Value::Null, json!(false))
    );
    let by_size = call(
        &s,
        Method::GET,
        &format!("{A1}/users/{}/media?order_by=media_length&dir=b&limit=1", alice.user_id),
        &root,
        None,
    )
    .await;
    assert_eq!(
        (by_size["media"][0]["media_id"].as_str(), by_size["next_token"].as_u64()),
        (Some(media_id(&a2)), Some(1))
    );
    expect_error(
        s.get(&format!("{A1}/users/{}/media?order_by=size", alice.user_id), Some(&root.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Quarantine hides it from everyone, downloads and thumbnails; release brings it back.
    let quarantine = format!("{A1}/media/quarantine/localhost/{}", media_id(&a1));
    call(&s, Method::POST, &quarantine, &root, Some(json!({}))).await;
    assert_eq!(download_status(&s, &alice, &a1).await, StatusCode::NOT_FOUND);
    assert_eq!(download_status(&s, &bob, &a1).await, StatusCode::NOT_FOUND);
    let legacy = s
        .http
        .get(format!("{}/_matrix/media/v3/download/localhost/{}", s.base, media_id(&a1)))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), StatusCode::NOT_FOUND);
    let listed = call(&s, Method::GET, &format!("{A1}/users/{}/media", alice.user_id), &root, None).await;
    assert_eq!(listed["media"][0]["quarantined_by"], root.user_id);
    call(
        &s,
        Method::POST,
        &format!("{A1}/media/unquarantine/localhost/{}", media_id(&a1)),
        &root,
        Some(json!({})),
    )
    .await;
    assert_eq!(download_status(&s, &bob, &a1).await, StatusCode::OK);

    // Protected media is spared when a user's media is quarantined.
    call(&s, Method::POST, &format!("{A1}/media/protect/{}", media_id(&a2)), &root, Some(json!({}))).await;
    let count = call(
        &s,
        Method::POST,
        &format!("{A1}/user/{}/media/quarantine", alice.user_id),
        &root,
        Some(json!({})),
    )
    .await;
    assert_eq!(count, json!({"num_quarantined": 2}));
    assert_eq!(download_status(&s, &bob, &a2).await, StatusCode::OK);
    assert_eq!(download_status(&s, &bob, &a3).await, StatusCode::NOT_FOUND);
    call(
        &s,
        Method::POST,
        &format!("{A1}/media/unquarantine/localhost/{}", media_id(&a3)),
        &root,
        Some(json!({})),
    )
    .await;
    call(
        &s,
        Method::POST,
        &format!("{A1}/media/unquarantine/localhost/{}", media_id(&a1)),
        &root,
        Some(json!({})),
    )
    .await;

    // A room's media: what its events name, local and remote; quarantine by room.
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    for (txn, content) in [
        ("i1", json!({"msgtype": "m.file", "body": "f", "url": b1})),
        (
            "i2",
            json!({"msgtype": "m.image", "body": "i", "url": a1, "info": {"thumbnail_url": "mxc://elsewhere/remote1"}}),
        ),
    ] {
        ok(s.put(&format!("{V3}/rooms/{room}/send/m.room.message/{txn}"), Some(&bob.token), content).await)
            .await;
    }
    let media = call(&s, Method::GET, &format!("{A1}/room/{room}/media"), &root, None).await;
    assert_eq!(media, json!({"local": [b1, a1], "remote": ["mxc://elsewhere/remote1"]}));
    call(&s, Method::POST, &format!("{A1}/media/protect/{}", media_id(&a1)), &root, Some(json!({}))).await;
    let count =
        call(&s, Method::POST, &format!("{A1}/room/{room}/media/quarantine"), &root, Some(json!({}))).await;
    assert_eq!(count, json!({"num_quarantined": 1}));
    assert_eq!(download_status(&s, &alice, &b1).await, StatusCode::NOT_FOUND);
    assert_eq!(download_status(&s, &alice, &a1).await, StatusCode::OK);
    call(&s, Method::POST, &format!("{A1}/media/unprotect/{}", media_id(&a1)), &root, Some(json!({}))).await;

    // Statistics per uploader.
    let stats = call(
        &s,
        Method::GET,
        &format!("{A1}/statistics/users/media?order_by=media_count&dir=b"),
        &root,
        None,
    )
    .await;
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["users"][0]["user_id"], alice.user_id);
    assert_eq!(stats["users"][0]["media_count"], 3);
    assert_eq!(stats["users"][0]["media_length"], 10 + 23 + 12);
    let searched =
        call(&s, Method::GET, &format!("{A1}/statistics/users/media?search_term=bob"), &root, None).await;
    assert_eq!(
        searched["users"],
        json!([{"user_id": bob.user_id, "displayname": "bob", "media_count": 1, "media_length": 5}])
    );

    // Sweeps by age and size spare protected media and (by default) avatars.
    call(&s, Method::POST, &format!("{A1}/media/protect/{}", media_id(&a2)), &root, Some(json!({}))).await;
    let now = s.clock.now_ms() + 1;
    let swept = call(
        &s,
        Method::POST,
        &format!("{A1}/media/localhost/delete?before_ts={now}&size_gt=5"),
        &root,
        Some(json!({})),
    )
    .await;
    assert_eq!(swept, json!({"deleted_media": [media_id(&a1)], "total": 1}));
    assert_eq!(download_status(&s, &bob, &a1).await, StatusCode::NOT_FOUND);
    let swept = call(
        &s,
        Method::POST,
        &format!("{A1}/media/delete?before_ts={now}&keep_profiles=false"),
        &root,
        Some(json!({})),
    )
    .await;
    let mut gone: Vec<&str> =
        swept["deleted_media"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    gone.sort_unstable();
    let mut expected = [media_id(&a3), media_id(&b1)];
    expected.sort_unstable();
    assert_eq!(gone, expected);
    expect_error(
        s.post(&format!("{A1}/media/elsewhere/delete?before_ts=1"), Some(&root.token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{A1}/media/delete"), Some(&root.token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );

    // One by one, and a user's whole list.
    let deleted =
        call(&s, Method::DELETE, &format!("{A1}/media/localhost/{}", media_id(&a2)), &root, None).await;
    assert_eq!(deleted, json!({"deleted_media": [media_id(&a2)], "total": 1}));
    expect_error(
        s.call(Method::DELETE, &format!("{A1}/media/localhost/{}", media_id(&a2)), Some(&root.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let b2 = upload(&s, &bob, b"more", "text/plain").await;
    let deleted = call(&s, Method::DELETE, &format!("{A1}/users/{}/media", bob.user_id), &root, None).await;
    assert_eq!(deleted, json!({"deleted_media": [media_id(&b2)], "total": 1}));
    assert_eq!(
        call(&s, Method::GET, &format!("{A1}/users/{}/media", bob.user_id), &root, None).await["total"],
        0
    );

    // There is no remote media cache without federation.
    let purged =
        call(&s, Method::POST, &format!("{A1}/purge_media_cache?before_ts={now}"), &root, Some(json!({})))
            .await;
    assert_eq!(purged, json!({"deleted": 0}));
}

#[tokio::test]
async fn event_reports_are_listed_read_and_resolved() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby"}),
    )
    .await;
    join(&s, &bob, &room).await;
    let rude = send_text(&s, &alice, &room, "1", "rude words").await;
    let spam = send_text(&s, &bob, &room, "2", "spam").await;
    ok(s.post(&format!("{V3}/rooms/{room}/report/{rude}"), Some(&bob.token), json!({"reason": "rude"}))
        .await)
    .await;
    s.clock.advance_ms(1_000);
    ok(s.post(&format!("{V3}/rooms/{room}/report/{spam}"), Some(&alice.token), json!({"reason": "spam"}))
        .await)
    .await;
    // Room and user reports are not event reports.
    ok(s.post(&format!("{V3}/rooms/{room}/report"), Some(&bob.token), json!({"reason": "room"})).await).await;

    let list = call(&s, Method::GET, &format!("{A1}/event_reports"), &root, None).await;
    assert_eq!(list["total"], 2);
    let newest = &list["event_reports"][0];
    assert_eq!(newest["event_id"], spam.as_str());
    assert_eq!(newest["user_id"], alice.user_id);
    assert_eq!(newest["sender"], bob.user_id);
    assert_eq!(newest["name"], "Lobby");
    assert_eq!(newest["canonical_alias"], "#lobby:localhost");
    assert_eq!(newest["room_id"], room.as_str());
    assert!(newest["received_ts"].is_u64() && newest["id"].is_u64());
    let forward = call(&s, Method::GET, &format!("{A1}/event_reports?dir=f&limit=1"), &root, None).await;
    assert_eq!(
        (forward["event_reports"][0]["event_id"].as_str(), forward["next_token"].as_u64()),
        (Some(rude.as_str()), Some(1))
    );
    // The client API stores no score (ruma's report request has none since the spec dropped
    // it); the field is there, null.
    assert_eq!(forward["event_reports"][0].get("score"), Some(&Value::Null));
    for (filter, expect) in [
        (format!("user_id={}", urlencode(&bob.user_id)), &rude),
        (format!("event_sender_user_id={}", urlencode(&bob.user_id)), &spam),
    ] {
        let found = call(&s, Method::GET, &format!("{A1}/event_reports?{filter}"), &root, None).await;
        assert_eq!(found["total"], 1, "{filter}");
        assert_eq!(found["event_reports"][0]["event_id"], expect.as_str());
    }
    let by_room =
        call(&s, Method::GET, &format!("{A1}/event_reports?room_id={}", urlencode(&room)), &root, None).await;
    assert_eq!(by_room["total"], 2);

    let id = forward["event_reports"][0]["id"].as_u64().unwrap();
    let one = call(&s, Method::GET, &format!("{A1}/event_reports/{id}"), &root, None).await;
    assert_eq!(one["event_json"]["event_id"], rude.as_str());
    assert_eq!(one["event_json"]["content"]["body"], "rude words");
    assert!(one["event_json"]["auth_events"].is_array(), "the event as stored: {one}");
    assert_eq!(call(&s, Method::DELETE, &format!("{A1}/event_reports/{id}"), &root, None).await, json!({}));
    expect_error(
        s.get(&format!("{A1}/event_reports/{id}"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.call(Method::DELETE, &format!("{A1}/event_reports/{id}"), Some(&root.token), None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{A1}/event_reports/x"), Some(&root.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_eq!(call(&s, Method::GET, &format!("{A1}/event_reports"), &root, None).await["total"], 1);
}

#[tokio::test]
async fn users_who_are_not_server_admins_get_403_on_every_route() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let event = send_text(&s, &alice, &room, "1", "x").await;
    let mxc = upload(&s, &alice, b"mine", "text/plain").await;
    let id = media_id(&mxc);
    let me = &alice.user_id;
    let routes = [
        (Method::GET, format!("{A1}/rooms")),
        (Method::GET, format!("{A1}/rooms/{room}")),
        (Method::DELETE, format!("{A1}/rooms/{room}")),
        (Method::GET, format!("{A1}/rooms/{room}/members")),
        (Method::GET, format!("{A1}/rooms/{room}/state")),
        (Method::GET, format!("{A1}/rooms/{room}/messages")),
        (Method::GET, format!("{A1}/rooms/{room}/context/{event}")),
        (Method::GET, format!("{A1}/rooms/{room}/block")),
        (Method::PUT, format!("{A1}/rooms/{room}/block")),
        (Method::POST, format!("{A1}/rooms/{room}/make_room_admin")),
        (Method::GET, format!("{A1}/rooms/{room}/forward_extremities")),
        (Method::DELETE, format!("{A1}/rooms/{room}/forward_extremities")),
        (Method::POST, format!("{A1}/join/{room}")),
        (Method::DELETE, format!("{A2}/rooms/{room}")),
        (Method::GET, format!("{A2}/rooms/{room}/delete_status")),
        (Method::GET, format!("{A2}/rooms/delete_status/abc")),
        (Method::GET, format!("{A1}/users/{me}/media")),
        (Method::DELETE, format!("{A1}/users/{me}/media")),
        (Method::GET, format!("{A1}/room/{room}/media")),
        (Method::POST, format!("{A1}/room/{room}/media/quarantine")),
        (Method::POST, format!("{A1}/user/{me}/media/quarantine")),
        (Method::DELETE, format!("{A1}/media/localhost/{id}")),
        (Method::POST, format!("{A1}/media/localhost/delete?before_ts=1")),
        (Method::POST, format!("{A1}/media/delete?before_ts=1")),
        (Method::POST, format!("{A1}/media/protect/{id}")),
        (Method::POST, format!("{A1}/media/unprotect/{id}")),
        (Method::POST, format!("{A1}/media/quarantine/localhost/{id}")),
        (Method::POST, format!("{A1}/media/unquarantine/localhost/{id}")),
        (Method::POST, format!("{A1}/purge_media_cache?before_ts=1")),
        (Method::GET, format!("{A1}/statistics/users/media")),
        (Method::GET, format!("{A1}/event_reports")),
        (Method::GET, format!("{A1}/event_reports/1")),
        (Method::DELETE, format!("{A1}/event_reports/1")),
        (Method::GET, format!("{A1}/background_updates/status")),
        (Method::GET, format!("{A1}/scheduled_tasks")),
    ];
    for (method, path) in routes {
        let answer = s
            .call(method.clone(), &path, Some(&alice.token), Some(json!({"block": true, "user_id": me})))
            .await;
        let body = expect_error(answer, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert_eq!(body["error"], "You are not a server admin", "{method} {path}");
        // And without a token at all, 401.
        let answer = s.call(method.clone(), &path, None, None).await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{method} {path}: {}", answer.1);
    }
    // Nothing happened: the room, the event and the media are all still there.
    assert_eq!(
        s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&alice.token)).await.0,
        StatusCode::OK
    );
    assert_eq!(download_status(&s, &alice, &mxc).await, StatusCode::OK);
}

/// synapse-admin 0.11.4 (the built app in the shared webapps folder) in Debian's headless
/// Chromium, driven by `tests/web/synapse-admin.mjs`: sign in as a server admin, list users,
/// open one, deactivate another, list rooms and delete one, each result checked through the
/// admin API by the script and again here. Screenshots of every step are kept under the
/// target directory (the path is printed). `scripts/test` sets `CONDUIT_TEST_NODE`,
/// `CONDUIT_TEST_CHROMIUM` and `CONDUIT_SYNAPSE_ADMIN`; a missing one fails the test.
#[tokio::test]
async fn synapse_admin_in_a_browser_lists_users_deactivates_one_and_deletes_a_room() {
    use crate::sdk::{client_check, provided_by_scripts_test, script};
    let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for playwright-core");
    let chromium = provided_by_scripts_test("CONDUIT_TEST_CHROMIUM", "Debian's chromium");
    let app = provided_by_scripts_test("CONDUIT_SYNAPSE_ADMIN", "synapse-admin's built static files");
    let s = TestServer::start().await;
    admin(&s).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"name": "Doomed room", "preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "1", "to be deleted").await;

    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("synapse-admin-{}", std::process::id()));
    std::fs::create_dir_all(&artifacts).unwrap();
    eprintln!("synapse-admin screenshots: {}", artifacts.display());
    let result = client_check(
        "synapse-admin",
        node,
        vec![
            script("web/synapse-admin.mjs"),
            s.base.clone().into(),
            app,
            artifacts.clone().into(),
            "root".into(),
            "pw-root-12345".into(),
            room.clone().into(),
            chromium,
        ],
    )
    .await;
    if let Err(failure) = result {
        panic!("{failure}\nscreenshots: {}", artifacts.display());
    }
    // Checked again here: bob cannot log in, the room is gone.
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob-12345"});
    assert_eq!(s.post(&format!("{V3}/login"), None, login).await.0, StatusCode::FORBIDDEN);
    assert!(s.services.room_states.room(&ruma::RoomId::parse(&room).unwrap()).unwrap().is_none());
    assert!(std::fs::read_dir(&artifacts).unwrap().count() >= 8, "screenshots of every step");
}
