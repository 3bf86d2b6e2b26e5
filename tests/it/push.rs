//! Push rules, notification counts and `/notifications`, pushers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth},
    rooms::{V3, create_room, join, send_text},
    sync::{list, sync},
};

fn counts(body: &Value, room: &str) -> (u64, u64) {
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (unread["notification_count"].as_u64().unwrap_or(0), unread["highlight_count"].as_u64().unwrap_or(0))
}

async fn set_display_name(s: &TestServer, who: &Session, name: &str) {
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", who.user_id),
            Some(&who.token),
            json!({"displayname": name}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn push_rules_crud() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, all) = s.get(&format!("{V3}/pushrules/"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let overrides: Vec<&str> = all["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect();
    for id in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
    ] {
        assert!(overrides.contains(&id), "{id} missing from {overrides:?}");
    }
    let underride: Vec<&str> = all["global"]["underride"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect();
    assert!(underride.contains(&".m.rule.encrypted") && underride.contains(&".m.rule.room_one_to_one"));

    let rule = format!("{V3}/pushrules/global/content/cake");
    let (status, body) =
        s.put(&rule, Some(&alice.token), json!({"pattern": "cake", "actions": ["notify"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, got) = s.get(&rule, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["pattern"], "cake");
    let (status, _) = s.put(&format!("{rule}/enabled"), Some(&alice.token), json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = s.get(&format!("{rule}/enabled"), Some(&alice.token)).await;
    assert_eq!(got["enabled"], false);
    let (status, _) = s
        .put(
            &format!("{rule}/actions"),
            Some(&alice.token),
            json!({"actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = s.get(&format!("{rule}/actions"), Some(&alice.token)).await;
    assert_eq!(got["actions"][1]["set_tweak"], "highlight");

    // before/after place a rule relative to another; an unknown anchor is a bad request.
    let pie = format!("{V3}/pushrules/global/content/pie?before=cake");
    let (status, _) = s.put(&pie, Some(&alice.token), json!({"pattern": "pie", "actions": []})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, all) = s.get(&format!("{V3}/pushrules/global/"), Some(&alice.token)).await;
    let content: Vec<&str> =
        all["content"].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    let (pie_at, cake_at) =
        (content.iter().position(|r| *r == "pie"), content.iter().position(|r| *r == "cake"));
    assert!(pie_at < cake_at, "{content:?}");
    let bad = format!("{V3}/pushrules/global/content/tart?after=nothing");
    expect_error(
        s.put(&bad, Some(&alice.token), json!({"pattern": "t", "actions": []})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Server-default rules can be disabled but not deleted; custom ones can be deleted.
    let master = format!("{V3}/pushrules/global/override/.m.rule.master");
    let (status, _) = s.call(Method::DELETE, &master, Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.call(Method::DELETE, &rule, Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(s.get(&rule, Some(&alice.token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Changes reach sync as account data.
    let body = sync(&s, &alice, "").await;
    let rules =
        list(&body["account_data"]["events"]).into_iter().find(|e| e["type"] == "m.push_rules").unwrap();
    assert!(rules["content"]["global"]["content"].as_array().unwrap().iter().any(|r| r["rule_id"] == "pie"));
}

#[tokio::test]
async fn notification_counts_follow_rules_and_reset_on_receipts() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    set_display_name(&s, &bob, "Bobby").await;
    // A group room (three members) and a DM (two).
    let group = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &group).await;
    join(&s, &carol, &group).await;
    let dm = create_room(
        &s,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
    )
    .await;
    join(&s, &bob, &dm).await;

    // Group: a plain message notifies (underride .m.rule.message); a mention of bob
    // notifies and highlights.
    send_text(&s, &alice, &group, "g1", "hello all").await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{group}/send/m.room.message/g2"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "Bobby look", "m.mentions": {"user_ids": ["@bob:localhost"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // m.notice messages are suppressed.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{group}/send/m.room.message/g3"),
            Some(&alice.token),
            json!({"msgtype": "m.notice", "body": "bot"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // DM: one-to-one messages notify.
    let last_dm = send_text(&s, &alice, &dm, "d1", "psst").await;

    let body = sync(&s, &bob, "").await;
    assert_eq!(counts(&body, &group), (2, 1));
    assert_eq!(counts(&body, &dm), (1, 0));
    // The sender never counts her own messages.
    let body = sync(&s, &alice, "").await;
    assert_eq!(counts(&body, &group), (0, 0));

    // A receipt resets the count.
    let (status, _) =
        s.post(&format!("{V3}/rooms/{dm}/receipt/m.read/{last_dm}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts(&sync(&s, &bob, "").await, &dm), (0, 0));

    // A muted room (room rule with no actions) counts nothing.
    let mute = format!("{V3}/pushrules/global/room/{}", group.replace('!', "%21").replace(':', "%3A"));
    let (status, body) = s.put(&mute, Some(&bob.token), json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{group}/read_markers"),
            Some(&bob.token),
            json!({"m.read": last_in(&s, &bob, &group).await}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &group, "g4", "muted now").await;
    assert_eq!(counts(&sync(&s, &bob, "").await, &group), (0, 0));

    // /notifications lists what notified, newest first; only=highlight keeps the mention.
    let (status, list_all) = s.get(&format!("{V3}/notifications"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{list_all}");
    let all = list_all["notifications"].as_array().unwrap();
    // Newest first: the DM message (read), the mention, the plain group message, and the
    // DM invite itself (.m.rule.invite_for_me).
    assert_eq!(all.len(), 4, "{list_all}");
    assert_eq!(all[0]["room_id"], dm);
    assert_eq!(all[0]["read"], true);
    assert_eq!(all[3]["event"]["content"]["membership"], "invite");
    let (_, highlights) = s.get(&format!("{V3}/notifications?only=highlight"), Some(&bob.token)).await;
    let highlights = highlights["notifications"].as_array().unwrap();
    assert_eq!(highlights.len(), 1);
    assert_eq!(highlights[0]["event"]["content"]["body"], "Bobby look");
    // Paging by from/limit.
    let (_, page) = s.get(&format!("{V3}/notifications?limit=2"), Some(&bob.token)).await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let next = page["next_token"].as_str().unwrap();
    let (_, rest) = s.get(&format!("{V3}/notifications?from={next}"), Some(&bob.token)).await;
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 2);
    assert!(rest.get("next_token").is_none_or(|t| t.is_null()));
}

async fn last_in(s: &TestServer, who: &Session, room: &str) -> String {
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=1"), Some(&who.token)).await;
    page["chunk"][0]["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn thread_notifications_are_counted_per_thread() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let dm =
        create_room(&s, &alice, json!({"preset": "trusted_private_chat", "invite": [bob.user_id]})).await;
    join(&s, &bob, &dm).await;
    let root = send_text(&s, &alice, &dm, "r", "root").await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{dm}/send/m.room.message/th1"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let filter = crate::sync::urlencode(
        &json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string(),
    );
    let body = sync(&s, &bob, &format!("filter={filter}")).await;
    assert_eq!(counts(&body, &dm), (1, 0), "the root counts in the main timeline");
    assert_eq!(body["rooms"]["join"][&dm]["unread_thread_notifications"][&root]["notification_count"], 1);
    // Without the opt-in, thread notifications are folded into the room's count.
    assert_eq!(counts(&sync(&s, &bob, "").await, &dm), (2, 0));
    // A threaded receipt on the root (main timeline) clears only the main count.
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{dm}/receipt/m.read/{root}"),
            Some(&bob.token),
            json!({"thread_id": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("filter={filter}")).await;
    assert_eq!(counts(&body, &dm), (0, 0));
    assert_eq!(body["rooms"]["join"][&dm]["unread_thread_notifications"][&root]["notification_count"], 1);
}

#[tokio::test]
async fn pushers_are_stored() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let pusher = json!({
        "kind": "http", "app_id": "im.example.app", "pushkey": "key-1",
        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
        "data": {"url": "https://push.example.com/_matrix/push/v1/notify", "format": "event_id_only"}
    });
    let (status, body) = s.post(&format!("{V3}/pushers/set"), Some(&alice.token), pusher.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, got) = s.get(&format!("{V3}/pushers"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["pushers"][0]["pushkey"], "key-1");
    assert_eq!(got["pushers"][0]["data"]["url"], "https://push.example.com/_matrix/push/v1/notify");
    let (_, theirs) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
    assert_eq!(theirs["pushers"], json!([]));

    // The same key registered by another user without append takes it over.
    let (status, _) = s.post(&format!("{V3}/pushers/set"), Some(&bob.token), pusher.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = s.get(&format!("{V3}/pushers"), Some(&alice.token)).await;
    assert_eq!(got["pushers"], json!([]));

    let mut bad = pusher.clone();
    bad["data"]["url"] = json!("https://push.example.com/wrong");
    expect_error(
        s.post(&format!("{V3}/pushers/set"), Some(&bob.token), bad).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let delete = json!({"kind": null, "app_id": "im.example.app", "pushkey": "key-1"});
    let (status, _) = s.post(&format!("{V3}/pushers/set"), Some(&bob.token), delete).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
    assert_eq!(got["pushers"], json!([]));
}

#[tokio::test]
async fn room_rules_are_named_by_room_ids_and_listed_by_kind() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    let encoded = crate::sync::urlencode(&room);
    // The room ID percent-encoded (as clients send it) and raw (`!` and `:` are allowed).
    for path in
        [format!("{V3}/pushrules/global/room/{encoded}"), format!("{V3}/pushrules/global/room/{room}")]
    {
        let (status, body) = s.put(&path, Some(&alice.token), json!({"actions": ["dont_notify"]})).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let (status, rule) = s.get(&path, Some(&alice.token)).await;
        assert_eq!(status, StatusCode::OK, "{rule}");
        assert_eq!(rule["rule_id"], room.as_str());
        assert_eq!(rule["actions"], json!(["dont_notify"]));
    }
    let (status, _) = s
        .put(
            &format!("{V3}/pushrules/global/room/{encoded}/enabled"),
            Some(&alice.token),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The rules of one kind, as a list in priority order.
    let (status, rooms) = s.get(&format!("{V3}/pushrules/global/room/"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    assert_eq!(
        rooms,
        json!([{"rule_id": room, "actions": ["dont_notify"], "default": false, "enabled": false}])
    );
    let (status, overrides) = s.get(&format!("{V3}/pushrules/global/override/"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(overrides[0]["rule_id"], ".m.rule.master", "{overrides}");
    expect_error(
        s.get(&format!("{V3}/pushrules/global/room/"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn malformed_push_rule_paths_are_bad_requests() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    for (method, path) in [
        (Method::GET, "/pushrules/global"),
        (Method::GET, "/pushrules/global/room"),
        (Method::GET, "/pushrules/global/nokind/"),
        (Method::GET, "/pushrules/notglobal/"),
        (Method::GET, "/pushrules/notglobal/room/x"),
        (Method::PUT, "/pushrules/global/room/x/notathing"),
        (Method::GET, "/pushrules/global/room/x/y/z"),
    ] {
        let (status, body) = s.call(method.clone(), &format!("{V3}{path}"), token, Some(json!({}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(body["errcode"].is_string(), "{body}");
    }
    // An unknown kind under a rule ID is a bad request too.
    let (status, body) = s.get(&format!("{V3}/pushrules/global/nokind/x"), token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn notifications_carry_a_profile_tag() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(
        &s,
        &alice,
        json!({"preset": "private_chat", "is_direct": true, "invite": [bob.user_id]}),
    )
    .await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "t1", "hello bob").await;
    let (status, body) = s.get(&format!("{V3}/notifications"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries = body["notifications"].as_array().unwrap();
    assert!(!entries.is_empty(), "{body}");
    for entry in entries {
        assert_eq!(entry.as_object().unwrap().get("profile_tag"), Some(&Value::Null), "{entry}");
    }
}

fn pusher_for(key: &str) -> Value {
    json!({
        "kind": "http", "app_id": format!("app.{key}"), "pushkey": key,
        "app_display_name": "Example", "device_display_name": key, "lang": "en",
        "data": {"url": "https://push.example.com/_matrix/push/v1/notify"}
    })
}

async fn pushkeys(s: &TestServer, who: &Session) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/pushers"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut keys: Vec<String> = body["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

/// Three devices of `name`, each with a pusher named after it.
async fn devices_with_pushers(s: &TestServer, name: &str) -> [Session; 3] {
    let first = s.register(name, "pw-old-12345").await;
    let second = s.login(name, "pw-old-12345", Some("TWO")).await;
    let third = s.login(name, "pw-old-12345", Some("THREE")).await;
    for (who, key) in [(&first, "one"), (&second, "two"), (&third, "three")] {
        let (status, body) = s.post(&format!("{V3}/pushers/set"), Some(&who.token), pusher_for(key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    [first, second, third]
}

async fn change_password(s: &TestServer, who: &Session, name: &str, logout_devices: Option<bool>) {
    let path = format!("{V3}/account/password");
    let mut body = json!({"new_password": "pw-new-12345"});
    if let Some(logout) = logout_devices {
        body["logout_devices"] = json!(logout);
    }
    let (_, challenge) = s.post(&path, Some(&who.token), body.clone()).await;
    body["auth"] = password_auth(name, "pw-old-12345", challenge["session"].as_str());
    let (status, answer) = s.post(&path, Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn pushers_go_with_the_devices_that_set_them() {
    let s = TestServer::start().await;
    // A password change that logs out the other devices deletes their pushers.
    let [first, ..] = devices_with_pushers(&s, "ann").await;
    change_password(&s, &first, "ann", None).await;
    assert_eq!(pushkeys(&s, &first).await, ["one"]);
    // One that keeps them keeps their pushers (as Synapse does).
    let [first, ..] = devices_with_pushers(&s, "ben").await;
    change_password(&s, &first, "ben", Some(false)).await;
    assert_eq!(pushkeys(&s, &first).await, ["one", "three", "two"]);

    // Logging out or deleting a device deletes its pushers; logging out everywhere, all.
    let [first, second, _] = devices_with_pushers(&s, "cat").await;
    assert_eq!(s.post(&format!("{V3}/logout"), Some(&second.token), json!({})).await.0, StatusCode::OK);
    assert_eq!(pushkeys(&s, &first).await, ["one", "three"]);
    let path = format!("{V3}/delete_devices");
    let (_, challenge) = s.post(&path, Some(&first.token), json!({"devices": ["THREE"]})).await;
    let auth = password_auth("cat", "pw-old-12345", challenge["session"].as_str());
    let (status, body) = s.post(&path, Some(&first.token), json!({"devices": ["THREE"], "auth": auth})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pushkeys(&s, &first).await, ["one"]);
    let other = s.login("cat", "pw-old-12345", None).await;
    assert_eq!(s.post(&format!("{V3}/logout/all"), Some(&other.token), json!({})).await.0, StatusCode::OK);
    let again = s.login("cat", "pw-old-12345", None).await;
    assert_eq!(pushkeys(&s, &again).await, Vec::<String>::new());
}

/// Push evaluation keeps the inputs it reads for every event in memory (members' rules and
/// classes, the roster, power levels read from the state): a change to any of them counts
/// from the very next event, through `/sync`'s counts and `/notifications`.
#[tokio::test]
async fn rule_name_and_power_changes_count_from_the_next_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for who in [&bob, &carol, &dave] {
        assert_eq!(join(&s, who, &room).await.0, StatusCode::OK);
    }
    let send = |who: &Session, txn: &str, content: Value| {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/{txn}");
        let token = who.token.clone();
        let s = &s;
        async move {
            let (status, body) = s.put(&path, Some(&token), content).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});
    let counts_of = |who: &Session| {
        let (s, room) = (&s, room.clone());
        let who = who.clone();
        async move { counts(&sync(s, &who, "").await, &room) }
    };

    // Four members with the default rules: one class. A plain message notifies everyone.
    send(&alice, "m1", text("cake?")).await;
    assert_eq!(counts_of(&bob).await, (1, 0));
    // A keyword rule of bob's takes effect on the next message, for bob alone.
    let (status, body) = s
        .put(
            &format!("{V3}/pushrules/global/content/cake"),
            Some(&bob.token),
            json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&alice, "m2", text("cake!")).await;
    assert_eq!(counts_of(&bob).await, (2, 1));
    assert_eq!(counts_of(&dave).await, (2, 0));
    // Muting the room, then unmuting it.
    let mute = format!("{V3}/pushrules/global/room/{}", room.replace('!', "%21").replace(':', "%3A"));
    let (status, body) = s.put(&mute, Some(&bob.token), json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&alice, "m3", text("quiet")).await;
    assert_eq!(counts_of(&bob).await, (2, 1));
    let (status, _) = s.call(Method::DELETE, &mute, Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::OK);
    send(&alice, "m4", text("loud again")).await;
    assert_eq!(counts_of(&bob).await, (3, 1));

    // A rule reading the display name (as older clients set them): the name bob takes is
    // matched from the next message on.
    let (status, body) = s
        .put(
            &format!("{V3}/pushrules/global/override/by_name"),
            Some(&bob.token),
            json!({"conditions": [{"kind": "contains_display_name"}], "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&alice, "m5", text("hello Robert")).await;
    assert_eq!(counts_of(&bob).await, (4, 1));
    set_display_name(&s, &bob, "Robert").await;
    send(&alice, "m6", text("hello Robert")).await;
    assert_eq!(counts_of(&bob).await, (5, 2));
    // A mention names its member only: dave, with the default rules, is not highlighted by
    // bob's mention, and is by his own.
    send(
        &alice,
        "m7",
        json!({"msgtype": "m.text", "body": "bob?", "m.mentions": {"user_ids": [bob.user_id]}}),
    )
    .await;
    assert_eq!((counts_of(&bob).await, counts_of(&dave).await), ((6, 3), (7, 0)));
    send(
        &alice,
        "m8",
        json!({"msgtype": "m.text", "body": "dave?", "m.mentions": {"user_ids": [dave.user_id]}}),
    )
    .await;
    assert_eq!((counts_of(&bob).await, counts_of(&dave).await), ((7, 3), (8, 1)));

    // Power: carol may not notify the room (the default `room` level is 50)...
    let room_mention = |body: &str| json!({"msgtype": "m.text", "body": body, "m.mentions": {"room": true}});
    send(&carol, "c1", room_mention("@room listen")).await;
    assert_eq!(counts_of(&dave).await, (9, 1));
    // ... until she is given 50, which counts from her next message.
    let power_path = format!("{V3}/rooms/{room}/state/m.room.power_levels/");
    let (status, mut power) = s.get(&power_path, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{power}");
    power["users"][&carol.user_id] = json!(50);
    let (status, body) = s.put(&power_path, Some(&alice.token), power).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&carol, "c2", room_mention("@room listen now")).await;
    assert_eq!(counts_of(&dave).await, (10, 2));
    assert_eq!(counts_of(&bob).await, (9, 4));
    // A sender is never notified of her own messages: carol counts alice's eight.
    assert_eq!(counts_of(&carol).await, (8, 0));

    // /notifications agrees: dave's newest is carol's room mention, highlighted.
    let (status, list) = s.get(&format!("{V3}/notifications?limit=1"), Some(&dave.token)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let newest = &list["notifications"][0];
    assert_eq!(newest["event"]["content"]["body"], "@room listen now");
    assert!(newest["actions"].as_array().unwrap().iter().any(|a| a["set_tweak"] == "highlight"), "{newest}");
}

async fn receipt(s: &TestServer, who: &Session, room: &str, event: &str, body: Value) {
    let (status, answer) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{event}"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Unread counts come from running totals, and the rows a receipt covers are removed: the
/// counts stay exact through receipts in the middle of what was sent, threaded and
/// unthreaded receipts, and a leave and a join again.
#[tokio::test]
async fn counts_stay_exact_as_receipts_remove_what_they_cover() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send_text(&s, &alice, &room, &format!("m{i}"), &format!("message {i}")).await);
    }
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (5, 0));
    // A receipt in the middle leaves what follows it.
    receipt(&s, &bob, &room, &sent[2], json!({})).await;
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (2, 0));
    // An older receipt changes nothing (receipts do not move back).
    receipt(&s, &bob, &room, &sent[0], json!({})).await;
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (2, 0));
    sent.push(send_text(&s, &alice, &room, "m5", "message 5").await);
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (3, 0));
    receipt(&s, &bob, &room, &sent[5], json!({})).await;
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (0, 0));
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/m6"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (1, 1));
    // Carol, who read nothing, still counts everything.
    assert_eq!(counts(&sync(&s, &carol, "").await, &room), (7, 0));

    // Threads: two replies; a threaded receipt on the first leaves one, and an unthreaded
    // receipt past both clears the thread too.
    let root = sent[5].clone();
    let reply = |txn: &str| {
        let (s, room, alice, root) = (&s, room.clone(), alice.clone(), root.clone());
        let txn = txn.to_owned();
        async move {
            let (status, body) = s
                .put(
                    &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
                    Some(&alice.token),
                    json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let t1 = reply("t1").await;
    reply("t2").await;
    let filter = crate::sync::urlencode(
        &json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string(),
    );
    let thread_count = |body: &Value| {
        body["rooms"]["join"][&room]["unread_thread_notifications"][&root]["notification_count"].as_u64()
    };
    assert_eq!(thread_count(&sync(&s, &bob, &format!("filter={filter}")).await), Some(2));
    receipt(&s, &bob, &room, &t1, json!({"thread_id": root})).await;
    let body = sync(&s, &bob, &format!("filter={filter}")).await;
    assert_eq!((thread_count(&body), counts(&body, &room)), (Some(1), (1, 1)));
    let last = send_text(&s, &alice, &room, "m7", "after the thread").await;
    receipt(&s, &bob, &room, &last, json!({})).await;
    let body = sync(&s, &bob, &format!("filter={filter}")).await;
    assert_eq!((thread_count(&body), counts(&body, &room)), (None, (0, 0)));

    // Leaving drops the room's counts; what was sent meanwhile does not count after a join.
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&carol.token), json!({})).await.0,
        StatusCode::OK
    );
    send_text(&s, &alice, &room, "m8", "while carol was away").await;
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    assert_eq!(counts(&sync(&s, &carol, "").await, &room), (0, 0));
    send_text(&s, &alice, &room, "m9", "welcome back").await;
    assert_eq!(counts(&sync(&s, &carol, "").await, &room), (1, 0));
}

/// `/notifications` keeps a notification a day and a highlight thirty days, as Synapse does;
/// unread counts do not depend on those rows.
#[tokio::test]
async fn notifications_expire_a_day_after_and_highlights_a_month_after() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "p", "plain").await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/h"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notified_bodies(&s, &bob).await, ["bob!", "plain"]);
    // Within a day nothing goes.
    s.clock.advance_ms(23 * 3600 * 1000);
    assert_eq!(s.services.notifications.expire(1000).unwrap(), 0);
    s.clock.advance_ms(2 * 3600 * 1000);
    // Bob's plain one and both of carol's (neither highlights her) are no longer listed; the
    // log's rows (one per event, not per member) stay for the highlight.
    assert_eq!(s.services.notifications.expire(1000).unwrap(), 0);
    assert_eq!(notified_bodies(&s, &bob).await, ["bob!"]);
    assert!(notified_bodies(&s, &carol).await.is_empty());
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (2, 1));
    s.clock.advance_ms(30 * 24 * 3600 * 1000);
    // A month on, both events' log rows go.
    assert_eq!(s.services.notifications.expire(1000).unwrap(), 2);
    assert!(notified_bodies(&s, &bob).await.is_empty());
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (2, 1));
}

/// Counts follow a member's class of rules as it was at each event: a rule change moves only
/// what comes after it, members with the same custom rules share a class that outlives a
/// restart, and each member's thread and main counts stay exact in a room where only the
/// classes are counted.
#[tokio::test]
async fn counts_follow_each_members_rules_as_they_were_at_each_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for who in [&bob, &carol, &dave] {
        assert_eq!(join(&s, who, &room).await.0, StatusCode::OK);
    }
    // Bob and carol add the same keyword rule: one class for both (their rules differ only
    // in their own IDs).
    for who in [&bob, &carol] {
        let (status, body) = s
            .put(
                &format!("{V3}/pushrules/global/content/lunch"),
                Some(&who.token),
                json!({"pattern": "lunch", "actions": ["notify", {"set_tweak": "highlight"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    send_text(&s, &alice, &room, "a1", "lunch?").await;
    send_text(&s, &alice, &room, "a2", "anyone").await;
    let members = [bob.clone(), carol.clone(), dave.clone(), alice.clone()];
    assert_eq!(all_counts(&s, &members, &room).await, [(2, 1), (2, 1), (2, 0), (0, 0)]);

    // Bob mutes plain messages: what he has not read yet keeps counting as it did, later
    // messages do not count for him; carol keeps the shared rules.
    let (status, body) = s
        .put(
            &format!("{V3}/pushrules/global/override/quiet"),
            Some(&bob.token),
            json!({"conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}], "actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send_text(&s, &alice, &room, "a3", "lunch now").await;
    // Dave answers: alice counts it, dave (the sender) does not.
    send_text(&s, &dave, &room, "d1", "coming").await;
    assert_eq!(all_counts(&s, &members, &room).await, [(2, 1), (4, 2), (3, 0), (1, 0)]);

    // After a restart the classes are the same ones (their IDs are stored).
    let s = s.restart().await;
    assert_eq!(all_counts(&s, &members, &room).await, [(2, 1), (4, 2), (3, 0), (1, 0)]);
    send_text(&s, &alice, &room, "a4", "lunch is over").await;
    assert_eq!(all_counts(&s, &members, &room).await, [(2, 1), (5, 3), (4, 0), (1, 0)]);

    // Bob unmutes: from then on he counts again.
    let (status, _) = s
        .call(Method::DELETE, &format!("{V3}/pushrules/global/override/quiet"), Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "a5", "lunch tomorrow").await;
    assert_eq!(all_counts(&s, &members, &room).await, [(3, 2), (6, 4), (5, 0), (1, 0)]);

    // /notifications lists each member's own: bob's are a1, a2 and a5; dave's everything
    // but his own message.
    assert_eq!(notified_bodies(&s, &bob).await, ["lunch tomorrow", "anyone", "lunch?"]);
    assert_eq!(
        notified_bodies(&s, &dave).await,
        ["lunch tomorrow", "lunch is over", "lunch now", "anyone", "lunch?"]
    );
    assert_eq!(notified_bodies(&s, &alice).await, ["coming"]);

    // A receipt on a3 clears carol's count up to it.
    let a3 = {
        let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=5"), Some(&carol.token)).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["content"]["body"] == "lunch now")
            .unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{a3}"), Some(&carol.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts(&sync(&s, &carol, "").await, &room), (3, 2));
}

/// Each member's unread counts in the room.
async fn all_counts(s: &TestServer, members: &[Session], room: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for who in members {
        out.push(counts(&sync(s, who, "").await, room));
    }
    out
}

/// The bodies of the user's `/notifications`, newest first.
async fn notified_bodies(s: &TestServer, who: &Session) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/notifications"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// The room's members by class are kept between events and brought up to date by each
/// join and leave: a class stays evaluated while any member of it is left in the room, a
/// member evaluated on their own is evaluated once, and a member who comes back counts
/// again.
#[tokio::test]
async fn classes_follow_joins_and_leaves_between_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let erin = s.register("erin", "pw-erin-12345").await;
    // Carol and dave share a keyword class; erin's rule names her own localpart, so she is
    // evaluated on her own.
    for (who, pattern) in [(&carol, "lunch"), (&dave, "lunch"), (&erin, "erin")] {
        let (status, body) = s
            .put(
                &format!("{V3}/pushrules/global/content/kw"),
                Some(&who.token),
                json!({"pattern": pattern, "actions": ["notify", {"set_tweak": "highlight"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    // The first event makes the partition (alice and bob, the defaults' class).
    send_text(&s, &alice, &room, "m0", "hello").await;

    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "m1", "lunch 1").await;
    assert_eq!(counts(&sync(&s, &carol, "").await, &room), (1, 1));

    // Dave joins and carol leaves before the next event: the class keeps one member.
    assert_eq!(join(&s, &dave, &room).await.0, StatusCode::OK);
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&carol.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "m2", "lunch 2").await;
    assert_eq!(counts(&sync(&s, &dave, "").await, &room), (1, 1));

    // Erin joins: counted on her own, the keyword class still counted for dave.
    assert_eq!(join(&s, &erin, &room).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "m3", "lunch 3").await;
    assert_eq!(counts(&sync(&s, &erin, "").await, &room), (1, 0));
    assert_eq!(counts(&sync(&s, &dave, "").await, &room), (2, 2));
    send_text(&s, &alice, &room, "m4", "is erin coming").await;
    assert_eq!(counts(&sync(&s, &erin, "").await, &room), (2, 1));
    assert_eq!(notified_bodies(&s, &erin).await, ["is erin coming", "lunch 3"]);

    // Carol comes back: the class counts her again from her join on.
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    let before = counts(&sync(&s, &carol, "").await, &room);
    send_text(&s, &alice, &room, "m5", "lunch 5").await;
    let after = counts(&sync(&s, &carol, "").await, &room);
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));

    // Dave leaves; the last of the class in the room is carol.
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&dave.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "m6", "lunch 6").await;
    let last = counts(&sync(&s, &carol, "").await, &room);
    assert_eq!((last.0 - after.0, last.1 - after.1), (1, 1));
    assert_eq!(counts(&sync(&s, &bob, "").await, &room), (7, 0));
}

/// Unread counts are kept in memory between reads while nothing that moves them happens:
/// reading them again after each receipt, thread reply, rule change, message and restart
/// gives what the rows give, including for a member who never sent a receipt in a room
/// with a long history.
#[tokio::test]
async fn unread_counts_read_again_stay_exact() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for who in [&bob, &carol] {
        assert_eq!(join(&s, who, &room).await.0, StatusCode::OK);
    }
    let mut sent = Vec::new();
    for i in 0..300 {
        sent.push(send_text(&s, &alice, &room, &format!("h{i}"), &format!("history {i}")).await);
    }
    let filter = crate::sync::urlencode(
        &json!({"room": {"timeline": {"limit": 1, "unread_thread_notifications": true}}}).to_string(),
    );
    let query = format!("filter={filter}");
    // Each member's main count, and the thread's count when there is one.
    let read = |who: Session, root: Option<String>| {
        let (s, room, query) = (&s, room.clone(), query.clone());
        async move {
            let body = sync(s, &who, &query).await;
            let thread = root.map(|root| {
                body["rooms"]["join"][&room]["unread_thread_notifications"][&root]["notification_count"]
                    .as_u64()
                    .unwrap_or(0)
            });
            (counts(&body, &room), thread)
        }
    };
    // Carol never sends a receipt: all 300 count, read after read.
    for _ in 0..3 {
        assert_eq!(read(carol.clone(), None).await, ((300, 0), None));
    }
    assert_eq!(read(bob.clone(), None).await, ((300, 0), None));
    receipt(&s, &bob, &room, &sent[149], json!({})).await;
    for _ in 0..2 {
        assert_eq!(read(bob.clone(), None).await, ((150, 0), None));
    }

    // Two thread replies: counted in the thread, apart from the main timeline; a threaded
    // receipt on the first leaves one.
    let root = sent[299].clone();
    let mut replies = Vec::new();
    for txn in ["t1", "t2"] {
        let (status, body) = s
            .put(
                &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
                Some(&alice.token),
                json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        replies.push(body["event_id"].as_str().unwrap().to_owned());
    }
    for _ in 0..2 {
        assert_eq!(read(bob.clone(), Some(root.clone())).await, ((150, 0), Some(2)));
        assert_eq!(read(carol.clone(), Some(root.clone())).await, ((300, 0), Some(2)));
    }
    receipt(&s, &bob, &room, &replies[0], json!({"thread_id": root})).await;
    assert_eq!(read(bob.clone(), Some(root.clone())).await, ((150, 0), Some(1)));

    // Bob mutes messages: nothing already counted changes, and the next message does not
    // count for him; carol counts it.
    assert_eq!(read(bob.clone(), None).await, ((150, 0), None));
    let (status, body) = s
        .put(
            &format!("{V3}/pushrules/global/override/quiet"),
            Some(&bob.token),
            json!({"conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}], "actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(read(bob.clone(), Some(root.clone())).await, ((150, 0), Some(1)));
    let last = send_text(&s, &alice, &room, "after", "after the rule").await;
    assert_eq!(read(bob.clone(), Some(root.clone())).await, ((150, 0), Some(1)));
    assert_eq!(read(carol.clone(), Some(root.clone())).await, ((301, 0), Some(2)));

    // After a restart (nothing in memory) the same counts are read from the rows.
    let s = s.restart().await;
    let body = sync(&s, &bob, &query).await;
    assert_eq!(counts(&body, &room), (150, 0));
    let body = sync(&s, &carol, &query).await;
    assert_eq!(counts(&body, &room), (301, 0));
    assert_eq!(body["rooms"]["join"][&room]["unread_thread_notifications"][&root]["notification_count"], 2);

    // A receipt on the last event clears everything for carol, read after read.
    receipt(&s, &carol, &room, &last, json!({})).await;
    for _ in 0..2 {
        let body = sync(&s, &carol, &query).await;
        assert_eq!(counts(&body, &room), (0, 0));
        assert!(body["rooms"]["join"][&room]["unread_thread_notifications"].get(&root).is_none(), "{body}");
    }
}
