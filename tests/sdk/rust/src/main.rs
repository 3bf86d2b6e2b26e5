//! Drives matrix-rust-sdk (the crate Element X is built on) against a running conduit:
//! `conduit-rust-sdk-check BASE_URL` runs the encryption scenario below;
//! `conduit-rust-sdk-check ui BASE_URL` runs Element X's sync stack (matrix-sdk-ui over
//! simplified sliding sync, see `ui.rs`). Prints one line per step and `OK` at the end; exits
//! non-zero on the first failure, naming it. Run by `tests/it/sdk.rs` against a server it boots.
//!
//! Covered: registration and login with crypto stores, an encrypted room message that the
//! other user decrypts (keys uploaded, queried and claimed, the room key sent to-device),
//! the server holding only ciphertext, and cross-signing bootstrap with the identity
//! visible to the other user, and key backup: recovery enabled on one device, history
//! decrypted on a fresh device after recovering with the recovery key; and interactive SAS
//! verification between two devices of the same user, completing on both.

#![recursion_limit = "256"]

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    Client,
    config::SyncSettings,
    encryption::{BackupDownloadStrategy, EncryptionSettings, verification::Verification},
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::{
            account::register,
            room::create_room,
            uiaa::{AuthData, Dummy},
        },
        events::{
            InitialStateEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
};
use tokio::sync::Mutex;

mod oauth;
mod ui;

fn step(message: &str) {
    println!("ok   {message}");
}

/// A registered, logged-in client with its own crypto store.
async fn client(base: &str, store: &std::path::Path, name: &str, password: &str) -> Result<Client> {
    let client = Client::builder().homeserver_url(base).sqlite_store(store, None).build().await?;
    let mut request = register::v3::Request::new();
    request.username = Some(name.to_owned());
    request.password = Some(password.to_owned());
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    request.inhibit_login = true;
    client.matrix_auth().register(request).await.context("register")?;
    client
        .matrix_auth()
        .login_username(name, password)
        .initial_device_display_name(name)
        .send()
        .await
        .context("login")?;
    Ok(client)
}

async fn sync_once(client: &Client) -> Result<()> {
    client.sync_once(SyncSettings::default().timeout(Duration::from_millis(0))).await.context("sync")?;
    Ok(())
}

async fn encrypted_round_trip(base: &str, alice: &Client, bob: &Client) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some("secret".to_owned());
    request.invite = vec![bob.user_id().context("bob's user id")?.to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
            .to_raw_any(),
    ];
    let room = alice.create_room(request).await.context("createRoom")?;
    let room_id = room.room_id().to_owned();
    sync_once(bob).await?;
    bob.join_room_by_id(&room_id).await.context("join")?;
    sync_once(bob).await?;
    sync_once(alice).await?;
    ensure!(room.latest_encryption_state().await?.is_encrypted(), "alice's room is not encrypted");
    step("encrypted room created and joined");

    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&received);
    bob.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock().await.push(event.content.body().to_owned());
        }
    });
    let sent = room.send(RoomMessageEventContent::text_plain("the secret plan")).await.context("send")?;
    step("alice sent an encrypted message (bob's keys queried and claimed, room key shared)");

    let stored = raw_event(base, bob, &room_id, sent.response.event_id.as_str()).await?;
    ensure!(stored["type"] == "m.room.encrypted", "stored event type {}", stored["type"]);
    ensure!(!stored.to_string().contains("the secret plan"), "plaintext reached the server");
    step("the server holds only ciphertext");

    for _ in 0..10 {
        sync_once(bob).await?;
        if received.lock().await.iter().any(|b| b == "the secret plan") {
            step("bob decrypted the message");
            return Ok(room_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("bob never decrypted the message; got {:?}", received.lock().await)
}

/// The event as the server stores it, read with plain HTTP.
async fn raw_event(
    base: &str,
    client: &Client,
    room_id: &RoomId,
    event_id: &str,
) -> Result<serde_json::Value> {
    let token = client.access_token().context("token")?;
    let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
    Ok(reqwest::Client::new().get(url).bearer_auth(token).send().await?.error_for_status()?.json().await?)
}

async fn cross_signing(alice: &Client, bob: &Client) -> Result<()> {
    // The first upload of cross-signing keys needs no password.
    alice.encryption().bootstrap_cross_signing(None).await.context("bootstrap cross-signing")?;
    let status = alice.encryption().cross_signing_status().await.context("cross-signing status")?;
    ensure!(status.is_complete(), "alice's cross-signing is incomplete: {status:?}");
    // The device's new signature comes back through a key query, which a sync triggers.
    sync_once(alice).await?;
    let own = alice.encryption().get_own_device().await?.context("own device")?;
    ensure!(own.is_cross_signed_by_owner(), "alice's device is not signed by her self-signing key");
    step("alice bootstrapped cross-signing; her device is signed by her identity");

    let alice_id = alice.user_id().context("alice's id")?.to_owned();
    sync_once(bob).await?;
    let identity = bob.encryption().request_user_identity(&alice_id).await.context("query identity")?;
    ensure!(identity.is_some(), "bob cannot see alice's identity");
    step("bob sees alice's cross-signing identity");
    Ok(())
}

/// Alice turns on recovery (secret storage and key backup); a message's room key goes to
/// the backup; a fresh device of hers recovers with the recovery key and decrypts history.
async fn key_backup(base: &str, alice: &Client, name: &str, password: &str, room_id: &RoomId) -> Result<()> {
    let recovery_key = alice.encryption().recovery().enable().await.context("enable recovery")?;
    let room = alice.get_room(room_id).context("alice's room")?;
    room.send(RoomMessageEventContent::text_plain("from the past")).await.context("send")?;
    alice.encryption().backups().wait_for_steady_state().await.context("back up room keys")?;
    step("alice enabled recovery and backed up the room key");

    let store = tempfile::tempdir()?;
    let settings = EncryptionSettings {
        backup_download_strategy: BackupDownloadStrategy::OneShot,
        ..Default::default()
    };
    let fresh = Client::builder()
        .homeserver_url(base)
        .sqlite_store(store.path(), None)
        .with_encryption_settings(settings)
        .build()
        .await?;
    fresh.matrix_auth().login_username(name, password).initial_device_display_name("fresh").send().await?;
    sync_once(&fresh).await?;
    fresh.encryption().recovery().recover(&recovery_key).await.context("recover")?;
    step("a fresh device recovered the backup key from secret storage");

    for _ in 0..30 {
        sync_once(&fresh).await?;
        if let Some(room) = fresh.get_room(room_id) {
            let page = room.messages(MessagesOptions::backward()).await.context("messages")?;
            if page.chunk.iter().any(|event| event.raw().json().get().contains("from the past")) {
                step("the fresh device decrypted history with keys from the backup");
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the fresh device never decrypted the message from the backup")
}

/// Sync several clients once each.
async fn sync_all(clients: &[&Client]) -> Result<()> {
    for client in clients {
        sync_once(client).await?;
    }
    Ok(())
}

/// Interactive SAS (emoji) verification between two devices of the same user, carried by
/// to-device messages: request, accept, start, accept, compare, confirm on both sides.
async fn sas_verification(base: &str, alice: &Client, name: &str, password: &str) -> Result<()> {
    let store = tempfile::tempdir()?;
    let second = Client::builder().homeserver_url(base).sqlite_store(store.path(), None).build().await?;
    second.matrix_auth().login_username(name, password).initial_device_display_name("second").send().await?;
    sync_all(&[alice, &second]).await?;
    sync_all(&[alice, &second]).await?;
    let user = alice.user_id().context("alice's id")?.to_owned();
    let first_id = alice.device_id().context("first device id")?.to_owned();
    let second_id = second.device_id().context("second device id")?.to_owned();

    let first_seen = second
        .encryption()
        .get_device(&user, &first_id)
        .await?
        .context("the second device sees the first")?;
    let request_second = first_seen.request_verification().await.context("request verification")?;
    let flow = request_second.flow_id().to_owned();
    let mut request_first = None;
    for _ in 0..30 {
        sync_once(alice).await?;
        request_first = alice.encryption().get_verification_request(&user, &flow).await;
        if request_first.is_some() {
            break;
        }
    }
    let request_first = request_first.context("the request never reached the first device")?;
    request_first.accept().await.context("accept request")?;
    for _ in 0..30 {
        if request_second.is_ready() {
            break;
        }
        sync_once(&second).await?;
    }
    ensure!(request_second.is_ready(), "the request was never accepted");
    step("verification requested by the second device and accepted by the first");

    let sas_second = request_second.start_sas().await.context("start SAS")?.context("no SAS")?;
    let mut sas_first = None;
    for _ in 0..30 {
        sync_once(alice).await?;
        if let Some(Verification::SasV1(sas)) = alice.encryption().get_verification(&user, &flow).await {
            sas_first = Some(sas);
            break;
        }
    }
    let sas_first = sas_first.context("SAS never started on the first device")?;
    sas_first.accept().await.context("accept SAS")?;
    for _ in 0..30 {
        if sas_first.can_be_presented() && sas_second.can_be_presented() {
            break;
        }
        sync_all(&[alice, &second]).await?;
    }
    let (emoji_first, emoji_second) = (sas_first.emoji(), sas_second.emoji());
    ensure!(emoji_first.is_some(), "no emoji to compare");
    let symbols = |e: &Option<[matrix_sdk::encryption::verification::Emoji; 7]>| {
        e.as_ref().map(|e| e.iter().map(|x| x.symbol).collect::<String>())
    };
    ensure!(symbols(&emoji_first) == symbols(&emoji_second), "the two devices show different emoji");
    step("both devices show the same seven emoji");

    sas_first.confirm().await.context("confirm on the first")?;
    sas_second.confirm().await.context("confirm on the second")?;
    for _ in 0..30 {
        if sas_first.is_done() && sas_second.is_done() {
            break;
        }
        sync_all(&[alice, &second]).await?;
    }
    ensure!(sas_first.is_done() && sas_second.is_done(), "verification did not complete on both sides");
    let verified = alice.encryption().get_device(&user, &second_id).await?.context("second device")?;
    ensure!(verified.is_verified(), "the first device does not trust the second");
    step("SAS verification completed on both devices");
    Ok(())
}

async fn run(base: &str) -> Result<()> {
    let tag = std::process::id();
    let (a_store, b_store) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let alice_name = format!("sdk_alice_{tag}");
    let alice = client(base, a_store.path(), &alice_name, "pw-sdk-alice").await?;
    let bob = client(base, b_store.path(), &format!("sdk_bob_{tag}"), "pw-sdk-bob1").await?;
    sync_once(&alice).await?;
    sync_once(&bob).await?;
    step("registered, logged in and uploaded device keys");
    let room_id = encrypted_round_trip(base, &alice, &bob).await?;
    cross_signing(&alice, &bob).await?;
    key_backup(base, &alice, &alice_name, "pw-sdk-alice", &room_id).await?;
    sas_verification(base, &alice, &alice_name, "pw-sdk-alice").await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    // The SDK's own logs on stderr, when RUST_LOG asks for them.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [base] => run(base).await,
        ["ui", base] => ui::run(base).await,
        ["oauth", base, answer_file] => oauth::run(base, answer_file).await,
        _ => {
            eprintln!("usage: conduit-rust-sdk-check [ui] BASE_URL | oauth BASE_URL ANSWER_FILE");
            std::process::exit(2);
        }
    };
    match outcome {
        Ok(()) => println!("OK"),
        Err(error) => {
            println!("FAIL {error:#}");
            std::process::exit(1);
        }
    }
}
