//! A real OpenID provider for the single sign-on tests (node-oidc-provider, run from
//! `tests/oidc/provider.mjs` by the Node.js that `scripts/test` provides), and a minimal
//! browser: an HTTP client that keeps cookies and follows redirects one at a time, so a test
//! sees (and can tamper with) every hop between the server and the provider.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::sdk::{provided_by_scripts_test, script};

/// The client ID and secret this server has at the test provider.
pub const CLIENT_ID: &str = "conduit";
pub const CLIENT_SECRET: &str = "conduit-secret-0123456789";

/// A running provider; stopped when dropped.
pub struct OidcProvider {
    pub issuer: String,
    child: Child,
    /// The lines it printed after the first (back-channel logout events).
    events: Arc<Mutex<Vec<Value>>>,
    _config: tempfile::NamedTempFile,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's accounts at the provider: `alice` and `bob` are in the `chat-users` group,
/// `carol` is not; `dave`'s user name has characters a user ID cannot hold.
pub fn accounts() -> Value {
    json!({
        "alice": {"password": "alice-pw", "claims": {"preferred_username": "Alice", "name": "Alice Liddell", "email": "alice@example.com", "groups": ["chat-users", "staff"]}},
        "bob": {"password": "bob-pw", "claims": {"preferred_username": "bob", "name": "Bob Builder", "groups": ["chat-users"]}},
        "carol": {"password": "carol-pw", "claims": {"preferred_username": "carol", "name": "Carol", "groups": ["contractors"]}},
        "dave": {"password": "dave-pw", "claims": {"preferred_username": "Dave Müller", "name": "Dave Müller", "groups": ["chat-users"]}},
    })
}

/// One client registration for the server at `base`: its callback, its back-channel
/// logout URL, the ID token algorithm.
pub fn client(base: &str, client_id: &str, alg: &str) -> Value {
    json!({
        "client_id": client_id,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("{base}/_synapse/client/oidc/callback")],
        "backchannel_logout_uri": format!("{base}/_synapse/client/oidc/backchannel_logout"),
        "id_token_signed_response_alg": alg,
    })
}

impl OidcProvider {
    /// Start a provider with these clients and the test accounts, on a free port. It
    /// prints its issuer within a few seconds; a start that says nothing for 30 s is
    /// killed and tried once more (seen twice under heavy load, cause unknown), with what it
    /// wrote to stderr reported if the second fails too.
    pub async fn start(clients: Vec<Value>) -> Self {
        let text = json!({"port": 0, "clients": clients, "accounts": accounts()}).to_string();
        match Self::try_start(&text).await {
            Ok(provider) => provider,
            Err(failure) => {
                eprintln!("the OpenID provider did not start, trying again: {failure}");
                Self::try_start(&text).await.unwrap_or_else(|failure| panic!("{failure}"))
            }
        }
    }

    async fn try_start(text: &str) -> Result<Self, String> {
        let config = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(config.path(), text).expect("provider config written");
        let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for the OpenID provider");
        let child = Command::new(node)
            .arg(script("oidc/provider.mjs"))
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the OpenID provider starts (is tests/oidc installed? run scripts/test)");
        // Killed when this goes, on every path (a failed start too).
        let mut provider =
            Self { issuer: String::new(), child, events: Arc::new(Mutex::new(Vec::new())), _config: config };
        let stdout = provider.child.stdout.take().expect("stdout");
        let mut stderr = provider.child.stderr.take().expect("stderr");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<String>();
        let sink = Arc::clone(&provider.events);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = first_tx.send(line);
            }
            for line in lines.map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        let first = match tokio::time::timeout(Duration::from_secs(30), first_rx).await {
            Ok(Ok(line)) => line,
            outcome => {
                let _ = provider.child.kill();
                let status = provider.child.wait();
                let stderr = errors.join().unwrap_or_default();
                let what = if outcome.is_ok() { "exited" } else { "said nothing for 30 s" };
                return Err(format!("the OpenID provider {what} ({status:?}); its stderr:\n{stderr}"));
            }
        };
        provider.issuer = serde_json::from_str::<Value>(&first).expect("issuer line")["issuer"]
            .as_str()
            .expect("issuer")
            .to_owned();
        Ok(provider)
    }

    /// Wait (up to 10 s of wall time: the provider is another process) until it printed an
    /// event for which `done` holds; returns every event so far.
    pub async fn wait_for_event(&self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        for _ in 0..100 {
            let events = self.events();
            if events.iter().any(&done) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.events()
    }

    /// What it printed about back-channel logouts.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

/// An answer as the browser got it.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: StatusCode,
    pub location: Option<String>,
    pub headers: header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A browser: cookies by name (every test host is 127.0.0.1, and the names of the server's
/// and the provider's cookies differ), no automatic redirects.
pub struct Browser {
    http: reqwest::Client,
    cookies: Mutex<HashMap<String, String>>,
    /// Ask for HTML, as a browser's navigation does.
    pub html: bool,
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: Mutex::new(HashMap::new()),
            html: false,
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies.lock().unwrap().insert(name.to_owned(), value.to_owned());
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Page {
        let cookies = self
            .cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = request;
        if !cookies.is_empty() {
            request = request.header(header::COOKIE, cookies);
        }
        if self.html {
            request = request.header(header::ACCEPT, "text/html,application/xhtml+xml");
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("request to {url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let text = set.to_str().unwrap_or_default();
            let Some((name, rest)) = text.split_once('=') else { continue };
            let value = rest.split(';').next().unwrap_or_default();
            let lower = text.to_ascii_lowercase();
            let gone =
                value.is_empty() || lower.contains("max-age=0") || lower.contains("expires=thu, 01 jan 1970");
            let mut jar = self.cookies.lock().unwrap();
            if gone {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        let location = headers.get(header::LOCATION).map(|l| {
            let l = l.to_str().unwrap();
            url::Url::parse(url).unwrap().join(l).unwrap().to_string()
        });
        let body = response.text().await.unwrap_or_default();
        Page { url: url.to_owned(), status, location, headers, body }
    }

    pub async fn get(&self, url: &str) -> Page {
        self.send(self.http.get(url), url).await
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(url).form(form), url).await
    }

    /// Follow redirects from `url` until an answer is not a redirect, or the next hop
    /// starts with `stop_at` (that URL is returned, not requested).
    pub async fn follow(&self, url: &str, stop_at: &str) -> Result<Page, String> {
        let mut page = self.get(url).await;
        for _ in 0..20 {
            match &page.location {
                Some(next) if page.status.is_redirection() => {
                    if next.starts_with(stop_at) {
                        return Err(next.clone());
                    }
                    page = self.get(&next.clone()).await;
                }
                _ => return Ok(page),
            }
        }
        panic!("too many redirects from {url}");
    }

    /// From a server URL that starts a sign-in (the SSO redirect, or a fallback page's
    /// link), through the provider's login form as `user`, to the URL the provider sends the
    /// browser back to the server with (not requested yet). A browser already signed in at
    /// the provider goes straight back.
    pub async fn sign_in(&self, start: &str, server: &str, user: &str, password: &str) -> String {
        let page = match self.follow(start, server).await {
            Err(callback) => return callback,
            Ok(page) => page,
        };
        assert_eq!(page.status, StatusCode::OK, "the provider's login page: {page:?}");
        assert!(page.body.contains("Company sign-in"), "not the provider's login form: {}", page.body);
        let action = page.url.trim_end_matches('/').to_owned() + "/login";
        let posted = self.post_form(&action, &[("login", user), ("password", password)]).await;
        assert!(posted.status.is_redirection(), "signing in at the provider: {posted:?}");
        match self.follow(posted.location.as_deref().unwrap(), server).await {
            Err(callback) => callback,
            Ok(page) => panic!("the provider did not send the browser back to the server: {page:?}"),
        }
    }
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}
