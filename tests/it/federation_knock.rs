//! Knocking and restricted joins across servers, over HTTP: conduit ↔ conduit (`make_knock`
//! / `send_knock` both ways, a knock accepted by an invite and then a join, a knock refused
//! by the join rule or the room version, a knock retracted through the resident server; a
//! member of an allowed room joining a restricted room of another server with the
//! resident's authorisation, a non-member refused with the spec's errors), and with Synapse
//! (a conduit user knocks on a Synapse room and a Synapse user on a conduit room; restricted
//! joins both ways).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    federation_rooms::{
        TwoServers, accept_invite, encode, invite, membership_on, signed_request, sliding_lists_invited,
        two_servers,
    },
    harness::{Pki, Session, TestServer},
    rooms::{V3, create_room},
    synapse_federation::{Synapse, eventually as eventually_with},
    sync::sync,
};

/// A room whose join rule is `rule` (with `allow` for the restricted ones), of `version`.
async fn room_with_rule(s: &TestServer, who: &Session, version: &str, rule: Value) -> String {
    create_room(
        s,
        who,
        json!({
            "room_version": version,
            "name": "Door",
            "initial_state": [{"type": "m.room.join_rules", "content": rule}],
        }),
    )
    .await
}

async fn knock(s: &TestServer, who: &Session, room: &str, via: &str) -> (StatusCode, Value) {
    s.post(
        &format!("{V3}/knock/{}?via={}", encode(room), encode(via)),
        Some(&who.token),
        json!({"reason": "let me in"}),
    )
    .await
}

async fn join_via(s: &TestServer, who: &Session, room: &str, via: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/join/{}?via={}", encode(room), encode(via)), Some(&who.token), json!({})).await
}

/// The (type, state_key) pairs of a knocked room's stripped state in a sync.
fn knock_state(body: &Value, room: &str) -> Vec<(String, String)> {
    body["rooms"]["knock"][room]["knock_state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn expect_error((status, body): (StatusCode, Value), want: StatusCode, errcode: &str) {
    assert_eq!((status, body["errcode"].as_str()), (want, Some(errcode)), "{body}");
}

#[tokio::test]
async fn a_knock_on_another_servers_room_is_seen_there_and_accepted_by_an_invite_then_a_join() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = room_with_rule(&a, &alice, "10", json!({"join_rule": "knock"})).await;
    let before = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    // Bob (B) knocks through A: A holds his knock, with his reason.
    let (status, body) = knock(&b, &bob, &room, &a.name()).await;
    assert_eq!((status, body["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())), "{body}");
    assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("knock"));
    let (_, member) = a
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{}", encode(&room), encode(&bob.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(member["reason"], "let me in", "{member}");

    // Bob's sync on B shows the room under `knock`, with the state A answered and his knock.
    let synced = sync(&b, &bob, &format!("since={before}")).await;
    let state = knock_state(&synced, &room);
    for wanted in ["m.room.create", "m.room.join_rules", "m.room.name"] {
        assert!(state.contains(&(wanted.to_owned(), String::new())), "{wanted}: {synced}");
    }
    assert!(state.contains(&("m.room.member".to_owned(), bob.user_id.clone())), "{synced}");
    let initial = sync(&b, &bob, "").await;
    assert!(initial["rooms"]["knock"][&room].is_object(), "{initial}");
    // Sliding sync lists it too, with the room's name and the stripped state.
    sliding_lists_invited(&b, &bob, &room, "Door").await;
    let since = synced["next_batch"].as_str().unwrap().to_owned();

    // Alice accepts by inviting him: the invite replaces the knock in his sync.
    invite(&a, &alice, &room, &bob.user_id).await;
    let synced = sync(&b, &bob, &format!("since={since}")).await;
    assert!(synced["rooms"]["invite"][&room].is_object(), "{synced}");
    let initial = sync(&b, &bob, "").await;
    assert!(initial["rooms"]["knock"].get(&room).is_none(), "{initial}");
    // He joins (through A, the inviting server), as after any invite.
    accept_invite(&a, &b, &alice, &bob, &room).await;
    let synced = sync(&b, &bob, "").await;
    assert!(synced["rooms"]["join"][&room].is_object(), "{synced}");
    assert!(synced["rooms"]["knock"].get(&room).is_none(), "{synced}");
}

#[tokio::test]
async fn a_knock_on_another_servers_room_is_retracted_through_it() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = room_with_rule(&a, &alice, "11", json!({"join_rule": "knock"})).await;
    let (status, body) = knock(&b, &bob, &room, &a.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    // Bob changes his mind: the leave goes through A (make_leave/send_leave).
    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("leave"));
    let synced = sync(&b, &bob, &format!("since={since}")).await;
    let left = synced["rooms"]["leave"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(left.iter().any(|e| e["content"]["membership"] == "leave"), "{synced}");
    let initial = sync(&b, &bob, "").await;
    assert!(initial["rooms"]["knock"].get(&room).is_none(), "{initial}");
    // He may knock again.
    let (status, body) = knock(&b, &bob, &room, &a.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("knock"));
}

#[tokio::test]
async fn knocks_are_refused_where_the_room_does_not_take_them() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    // An invite-only room: M_FORBIDDEN, passed on to Bob's client; nothing of the room on B.
    let private = room_with_rule(&a, &alice, "10", json!({"join_rule": "invite"})).await;
    expect_error(knock(&b, &bob, &private, &a.name()).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(membership_on(&a, &alice, &private, &bob.user_id).await, Value::Null);
    assert!(sync(&b, &bob, "").await["rooms"]["knock"].get(&private).is_none());
    // A room version without knocking: M_INCOMPATIBLE_ROOM_VERSION.
    let v6 = room_with_rule(&a, &alice, "6", json!({"join_rule": "knock"})).await;
    expect_error(
        knock(&b, &bob, &v6, &a.name()).await,
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
    );

    // Asked directly: a server that does not support the room's version, a template for a
    // user of another server, and a knock event that is not a knock.
    let open = room_with_rule(&a, &alice, "10", json!({"join_rule": "knock"})).await;
    let make = |user: &str, ver: &str| {
        format!("/_matrix/federation/v1/make_knock/{}/{}?ver={ver}", encode(&open), encode(user))
    };
    let (status, body) = signed_request(&pki, &a, &b, "GET", &make(&bob.user_id, "9"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (body["errcode"].as_str(), body["room_version"].as_str()),
        (Some("M_INCOMPATIBLE_ROOM_VERSION"), Some("10"))
    );
    let (status, body) = signed_request(&pki, &a, &b, "GET", &make(&alice.user_id, "10"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, template) = signed_request(&pki, &a, &b, "GET", &make(&bob.user_id, "10"), None).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    assert_eq!(
        (template["room_version"].as_str(), template["event"]["content"]["membership"].as_str()),
        (Some("10"), Some("knock")),
        "{template}"
    );
    // The template sent back unsigned, under a path naming another event: refused.
    let path = format!("/_matrix/federation/v1/send_knock/{}/{}", encode(&open), encode("$not-a-knock"));
    let (status, body) = signed_request(&pki, &a, &b, "PUT", &path, Some(template["event"].clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(membership_on(&a, &alice, &open, &bob.user_id).await, Value::Null);

    // A room whose server ACL denies B: its knocks are refused there.
    let host = b.name().rsplit_once(':').map(|(host, _)| host.to_owned()).unwrap();
    let (status, body) = a
        .put(
            &format!("{V3}/rooms/{}/state/m.room.server_acl/", encode(&open)),
            Some(&alice.token),
            json!({"allow": ["*"], "deny": [host], "allow_ip_literals": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(knock(&b, &bob, &open, &a.name()).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(membership_on(&a, &alice, &open, &bob.user_id).await, Value::Null);
}

/// A: a public room `allowed` and a room restricted to its members (`rule`, `version`).
async fn restricted_room(a: &TestServer, alice: &Session, version: &str, rule: &str) -> (String, String) {
    let allowed = create_room(a, alice, json!({"preset": "public_chat", "room_version": version})).await;
    let room = room_with_rule(
        a,
        alice,
        version,
        json!({"join_rule": rule, "allow": [{"type": "m.room_membership", "room_id": allowed}]}),
    )
    .await;
    (allowed, room)
}

#[tokio::test]
async fn a_member_of_an_allowed_room_joins_a_restricted_room_of_another_server() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let carol = b.register("carol", "pw-carol-1234").await;
    for (version, rule) in [("10", "restricted"), ("11", "knock_restricted")] {
        let (allowed, room) = restricted_room(&a, &alice, version, rule).await;
        // Carol (B) is in no allowed room: A refuses with M_FORBIDDEN, passed on.
        expect_error(join_via(&b, &carol, &room, &a.name()).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        // Bob joins the allowed room, then the restricted one: A names Alice as the
        // authoriser and signs the join; both servers hold it.
        let (status, body) = join_via(&b, &bob, &allowed, &a.name()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = join_via(&b, &bob, &room, &a.name()).await;
        assert_eq!(status, StatusCode::OK, "v{version} {rule}: {body}");
        assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("join"));
        for (s, who) in [(&a, &alice), (&b, &bob)] {
            let (_, member) = s
                .get(
                    &format!("{V3}/rooms/{}/state/m.room.member/{}", encode(&room), encode(&bob.user_id)),
                    Some(&who.token),
                )
                .await;
            assert_eq!(member["join_authorised_via_users_server"], json!(alice.user_id), "{member}");
        }
    }
    // A restricted room where no member of A may invite any more (Alice left, Dave may not
    // invite): Carol, now in the allowed room, hears that another server should be asked.
    let dave = a.register("dave", "pw-dave-12345").await;
    let (allowed, room) = restricted_room(&a, &alice, "10", "restricted").await;
    for target in [&allowed, &room] {
        let (status, body) =
            a.post(&format!("{V3}/join/{}", encode(target)), Some(&dave.token), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let levels_path = format!("{V3}/rooms/{}/state/m.room.power_levels/", encode(&room));
    let (_, mut levels) = a.get(&levels_path, Some(&alice.token)).await;
    levels["invite"] = json!(50);
    let (status, body) = a.put(&levels_path, Some(&alice.token), levels).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        a.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = join_via(&b, &carol, &allowed, &a.name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(
        join_via(&b, &carol, &room, &a.name()).await,
        StatusCode::BAD_REQUEST,
        "M_UNABLE_TO_GRANT_JOIN",
    );

    // A restricted room whose allowed room A is not in: A cannot tell, M_UNABLE_TO_AUTHORISE_JOIN.
    let elsewhere = create_room(&b, &bob, json!({"preset": "public_chat", "room_version": "10"})).await;
    let room = room_with_rule(
        &a,
        &alice,
        "10",
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": elsewhere}]}),
    )
    .await;
    expect_error(
        join_via(&b, &carol, &room, &a.name()).await,
        StatusCode::BAD_REQUEST,
        "M_UNABLE_TO_AUTHORISE_JOIN",
    );
}

// ----- with Synapse -----

async fn synapse_membership(synapse: &Synapse, token: &str, room: &str, user: &str) -> Value {
    let (_, member) = synapse
        .call(
            reqwest::Method::GET,
            &format!("{V3}/rooms/{}/state/m.room.member/{}", encode(room), encode(user)),
            Some(token),
            None,
        )
        .await;
    member
}

#[tokio::test]
async fn knocks_cross_between_conduit_and_synapse_both_ways() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (sam, sam_token) = synapse.register("sam").await;

    // Alice (conduit) knocks on Sam's Synapse room; Sam sees the knock and invites her; she
    // joins.
    let room = synapse.create_room(&sam_token,
        json!({"room_version": "10", "name": "Synapse door",
               "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, body) = knock(&conduit, &alice, &room, &synapse.name).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    let member = synapse_membership(&synapse, &sam_token, &room, &alice.user_id).await;
    assert_eq!(member["membership"], "knock", "{member}");
    let synced = sync(&conduit, &alice, "").await;
    let state = knock_state(&synced, &room);
    assert!(state.contains(&("m.room.name".to_owned(), String::new())), "{synced}");
    assert!(state.contains(&("m.room.create".to_owned(), String::new())), "{synced}");
    let (status, body) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/rooms/{}/invite", encode(&room)),
            Some(&sam_token),
            Some(json!({"user_id": alice.user_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    eventually_with("Sam's invite in Alice's sync", &synapse, || async {
        sync(&conduit, &alice, "").await["rooms"]["invite"][&room].is_object()
    })
    .await;
    let (status, joined) =
        conduit.post(&format!("{V3}/join/{}", encode(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    eventually_with("Alice joined on Synapse", &synapse, || async {
        synapse_membership(&synapse, &sam_token, &room, &alice.user_id).await["membership"] == "join"
    })
    .await;

    // Sam (Synapse) knocks on Alice's conduit room; conduit holds the knock.
    let conduit_room = room_with_rule(&conduit, &alice, "10", json!({"join_rule": "knock"})).await;
    let (status, body) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/knock/{}?via={}", encode(&conduit_room), encode(&conduit.name())),
            Some(&sam_token),
            Some(json!({"reason": "from Synapse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    assert_eq!(membership_on(&conduit, &alice, &conduit_room, &sam).await, json!("knock"));
}

#[tokio::test]
async fn restricted_joins_cross_between_conduit_and_synapse_both_ways() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let carol = conduit.register("carol", "pw-carol-1234").await;
    let (sam, sam_token) = synapse.register("sam").await;

    // A Synapse room restricted to the members of another Synapse room: Alice (conduit)
    // joins the allowed room, then the restricted one with Synapse's authorisation; Carol,
    // in no allowed room, is refused.
    let allowed =
        synapse.create_room(&sam_token, json!({"preset": "public_chat", "room_version": "10"})).await;
    let room = synapse.create_room(&sam_token,
        json!({"room_version": "10", "initial_state": [{"type": "m.room.join_rules", "state_key": "",
               "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]}}]}),
    )
    .await;
    let (status, body) = join_via(&conduit, &carol, &room, &synapse.name).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = join_via(&conduit, &alice, &allowed, &synapse.name).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    let (status, body) = join_via(&conduit, &alice, &room, &synapse.name).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    eventually_with("Alice joined the restricted room on Synapse", &synapse, || async {
        synapse_membership(&synapse, &sam_token, &room, &alice.user_id).await["membership"] == "join"
    })
    .await;
    let member = synapse_membership(&synapse, &sam_token, &room, &alice.user_id).await;
    assert_eq!(member["join_authorised_via_users_server"], json!(sam), "{member}");

    // A conduit room restricted to a conduit room's members: Sam joins the allowed room,
    // then the restricted one, which conduit authorises and signs.
    let (allowed, room) = restricted_room(&conduit, &alice, "10", "restricted").await;
    for target in [&allowed, &room] {
        let (status, body) = synapse
            .call(
                reqwest::Method::POST,
                &format!(
                    "{V3}/join/{}?server_name={}&via={}",
                    encode(target),
                    encode(&conduit.name()),
                    encode(&conduit.name())
                ),
                Some(&sam_token),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    }
    assert_eq!(membership_on(&conduit, &alice, &room, &sam).await, json!("join"));
    let (_, member) = conduit
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{}", encode(&room), encode(&sam)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(member["join_authorised_via_users_server"], json!(alice.user_id), "{member}");
}
