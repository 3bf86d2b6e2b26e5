//! JWT login (`org.matrix.login.jwt`) through HTTP: the flow is listed when on; tokens
//! signed with a shared secret (HS256) or an RSA key (RS256, made with openssl) log in and
//! make the account at the first login with its display name; expired (on the server's
//! manual clock), not-yet-valid, wrongly issued, wrongly addressed and wrongly signed tokens
//! are refused with Synapse's `403 M_FORBIDDEN`; matrix-nio logs in through `login_raw`.

use std::process::Command;

use conduit::{config::JwtConfig, service::clock::Clock as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, expect_error},
    rooms::V3,
};

const ISSUER: &str = "https://portal.example.org";
const SECRET: &str = "a shared secret of the portal";

fn hs256_config() -> JwtConfig {
    JwtConfig {
        enabled: true,
        secret: Some(SECRET.to_owned()),
        algorithm: Some("HS256".to_owned()),
        display_name_claim: Some("name".to_owned()),
        issuer: Some(ISSUER.to_owned()),
        audiences: Some(vec!["chat".to_owned()]),
        ..JwtConfig::default()
    }
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn jwt_login(s: &TestServer, token: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/login"), None, json!({"type": "org.matrix.login.jwt", "token": token})).await
}

fn now_secs(s: &TestServer) -> u64 {
    s.clock.now_ms() / 1000
}

#[tokio::test]
async fn jwt_login_with_a_shared_secret_makes_and_logs_into_accounts() {
    let s = TestServer::start_with(|c| c.jwt = hs256_config()).await;
    let (_, flows) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(flows["flows"][0]["type"], "org.matrix.login.jwt", "listed first, as Synapse: {flows}");
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"));

    let now = now_secs(&s);
    let claims = json!({"sub": "erin", "name": "Erin Portal", "iss": ISSUER, "aud": "chat", "exp": now + 300, "iat": now});
    let (status, body) = jwt_login(&s, &hs256(&claims)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@erin:localhost");
    let token = body["access_token"].as_str().unwrap();
    let (_, who) = s.get(&format!("{V3}/account/whoami"), Some(token)).await;
    assert_eq!(who["user_id"], "@erin:localhost");
    let (_, profile) = s.get(&format!("{V3}/profile/@erin:localhost/displayname"), None).await;
    assert_eq!(profile["displayname"], "Erin Portal");

    // The same token again logs into the same account, a new device.
    let (status, again) = jwt_login(&s, &hs256(&claims)).await;
    assert_eq!((status, &again["user_id"]), (StatusCode::OK, &json!("@erin:localhost")));
    assert_ne!(again["device_id"], body["device_id"]);
    // An account registered with a password can be logged into by a token naming it.
    s.register("frank", "frank-password").await;
    let (status, _) =
        jwt_login(&s, &hs256(&json!({"sub": "frank", "iss": ISSUER, "aud": ["wiki", "chat"]}))).await;
    assert_eq!(status, StatusCode::OK);

    // Time: past `exp` (and Synapse's two minutes of leeway) on the server's clock.
    s.clock.advance_ms(300_000 + 121_000);
    let body = expect_error(jwt_login(&s, &hs256(&claims)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert!(body["error"].as_str().unwrap().starts_with("JWT validation failed"), "{body}");
    let now = now_secs(&s);
    let early = json!({"sub": "erin", "iss": ISSUER, "aud": "chat", "nbf": now + 600});
    expect_error(jwt_login(&s, &hs256(&early)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Issuer, audience, signature, subject, the token field and its size.
    let refused = [
        json!({"sub": "erin", "iss": "https://elsewhere.example", "aud": "chat"}),
        json!({"sub": "erin", "aud": "chat"}),
        json!({"sub": "erin", "iss": ISSUER, "aud": "wiki"}),
        json!({"sub": "erin", "iss": ISSUER}),
        json!({"iss": ISSUER, "aud": "chat"}),
        json!({"sub": "not a localpart!", "iss": ISSUER, "aud": "chat"}),
        json!({"sub": "@erin:elsewhere.example", "iss": ISSUER, "aud": "chat"}),
    ];
    for claims in refused {
        expect_error(jwt_login(&s, &hs256(&claims)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    let good = json!({"sub": "erin", "iss": ISSUER, "aud": "chat"});
    let forged =
        encode(&Header::new(Algorithm::HS256), &good, &EncodingKey::from_secret(b"guessed")).unwrap();
    let body = expect_error(jwt_login(&s, &forged).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(body["error"], "JWT validation failed: Signature verification failed");
    let other_alg =
        encode(&Header::new(Algorithm::HS512), &good, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    expect_error(jwt_login(&s, &other_alg).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let body = expect_error(
        s.post(&format!("{V3}/login"), None, json!({"type": "org.matrix.login.jwt"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(body["error"], "Token field for JWT is missing");
    for junk in ["", "not-a-jwt", "a.b.c", &"x".repeat(20_000)] {
        expect_error(jwt_login(&s, junk).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }

    // A deactivated account stays closed to tokens.
    s.services
        .accounts
        .deactivate_account(&ruma::OwnedUserId::try_from("@frank:localhost").unwrap(), false)
        .unwrap();
    let frank = json!({"sub": "frank", "iss": ISSUER, "aud": "chat"});
    expect_error(jwt_login(&s, &hs256(&frank)).await, StatusCode::FORBIDDEN, "M_USER_DEACTIVATED");

    // Every JWT login and refusal is in the audit log.
    s.services.accounts.create_user("root", "root-password", true).await.unwrap();
    let root = s.login("root", "root-password", None).await;
    let (_, log) = s.get("/_conduit/admin/v1/audit_log?limit=1000&action=login", Some(&root.token)).await;
    let jwt: Vec<&Value> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["params"]["type"] == "org.matrix.login.jwt")
        .collect();
    assert_eq!(jwt.iter().filter(|r| r["outcome"] == "success").count(), 3, "{jwt:?}");
    assert!(jwt.iter().filter(|r| r["outcome"] == "failure").count() >= 10, "{jwt:?}");
    assert!(jwt.iter().all(|r| !r.to_string().contains(SECRET)));
}

#[tokio::test]
async fn jwt_login_off_is_not_listed_and_not_accepted() {
    let s = TestServer::start().await;
    let (_, flows) = s.get(&format!("{V3}/login"), None).await;
    assert!(!flows.to_string().contains("jwt"), "{flows}");
    let token = hs256(&json!({"sub": "erin"}));
    expect_error(jwt_login(&s, &token).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");
}

/// An RSA key pair made with openssl: (private PKCS#8 PEM, public SPKI PEM).
fn rsa_key_pair(dir: &std::path::Path) -> (Vec<u8>, String) {
    let private = dir.join("jwt.key");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .status()
        .expect("openssl runs (scripts/test installs it)");
    assert!(status.success());
    let public = Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).output().unwrap();
    assert!(public.status.success());
    (std::fs::read(&private).unwrap(), String::from_utf8(public.stdout).unwrap())
}

#[tokio::test]
async fn jwt_login_with_an_rsa_public_key() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key_pair(keys.path());
    let other_dir = keys.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (another, _) = rsa_key_pair(&other_dir);
    let s = TestServer::start_with(move |c| {
        c.jwt = JwtConfig {
            enabled: true,
            secret: Some(public),
            algorithm: Some("RS256".to_owned()),
            subject_claim: Some("preferred_username".to_owned()),
            ..JwtConfig::default()
        }
    })
    .await;
    let claims = json!({"preferred_username": "grace", "exp": now_secs(&s) + 60});
    let token =
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&private).unwrap())
            .unwrap();
    let (status, body) = jwt_login(&s, &token).await;
    assert_eq!((status, &body["user_id"]), (StatusCode::OK, &json!("@grace:localhost")), "{body}");
    // The display name defaults to the localpart without a display name claim.
    let (_, profile) = s.get(&format!("{V3}/profile/@grace:localhost/displayname"), None).await;
    assert_eq!(profile["displayname"], "grace");
    // Signed with another key, or with the public key as an HMAC secret (algorithm confusion).
    let forged =
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&another).unwrap())
            .unwrap();
    expect_error(jwt_login(&s, &forged).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let public = s.services.config.jwt.secret.clone().unwrap();
    let confused =
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(public.as_bytes()))
            .unwrap();
    expect_error(jwt_login(&s, &confused).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // An `aud` while no audience is configured is refused, as Synapse refuses it.
    let addressed = json!({"preferred_username": "grace", "aud": "chat"});
    let token =
        encode(&Header::new(Algorithm::RS256), &addressed, &EncodingKey::from_rsa_pem(&private).unwrap())
            .unwrap();
    expect_error(jwt_login(&s, &token).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

#[tokio::test]
async fn jwt_keys_are_checked_at_start() {
    let loaded = conduit::config::Config::from_toml_str(
        "[global.jwt]\nenabled = true\nsecret = \"not a pem\"\nalgorithm = \"RS256\"\n",
    );
    let err = loaded.err().expect("an RSA algorithm needs a PEM public key");
    assert!(err.contains("jwt.secret"), "{err}");
    let err = conduit::config::Config::from_toml_str(
        "[global.jwt]\nenabled = true\nsecret = \"s\"\nalgorithm = \"XX1\"\n",
    )
    .err()
    .unwrap();
    assert!(err.contains("jwt.algorithm"), "{err}");
    let loaded = conduit::config::Config::from_toml_str(
        "[global.jwt]\nenabled = true\nsecret = \"s\"\nalgorithm = \"HS256\"\nissuer = \"x\"\naudiences = [\"a\"]\n",
    )
    .unwrap();
    assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
}

/// matrix-nio logs in with a JWT through `login_raw`.
#[tokio::test]
async fn matrix_nio_logs_in_with_a_jwt() {
    let python = crate::sdk::provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let s = TestServer::start_with(|c| c.jwt = hs256_config()).await;
    let token = hs256(&json!({"sub": "heidi", "iss": ISSUER, "aud": "chat", "exp": now_secs(&s) + 300}));
    crate::sdk::run_client_check(
        "matrix-nio JWT login",
        python,
        vec![
            crate::sdk::script("sdk/nio_login_external.py"),
            "jwt".into(),
            s.base.clone().into(),
            token.into(),
            "@heidi:localhost".into(),
        ],
    )
    .await;
}
