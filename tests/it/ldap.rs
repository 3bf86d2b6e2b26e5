//! LDAP login against a real OpenLDAP `slapd` (Debian's `slapd` and `ldap-utils`, installed
//! by scripts/test), started by each test on loopback in a temp dir from a `slapd.conf` and
//! seeded over LDAP with people, a `chat` group (the filter) and an `admins` group (the
//! admin filter), `memberOf` kept by slapd's memberof overlay. Anonymous clients may only
//! bind, so searches need the service account `cn=reader`. The TLS tests give slapd a
//! certificate from a CA made with openssl, for StartTLS and `ldaps://`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use conduit::config::{ConfigDuration, LdapConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, free_port, password_auth},
    rooms::V3,
};

const BASE: &str = "dc=example,dc=org";
const PEOPLE: &str = "ou=people,dc=example,dc=org";
const CHAT_FILTER: &str = "(memberOf=cn=chat,ou=groups,dc=example,dc=org)";
const ADMIN_FILTER: &str = "(memberOf=cn=admins,ou=groups,dc=example,dc=org)";
const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PW: &str = "root-secret";

/// The directory every test starts with: alice, bob and dave may chat (dave is an admin);
/// carol is in the directory but not in the chat group.
fn seed_ldif() -> String {
    let person = |uid: &str, cn: &str, mail: &str, password: &str| {
        format!(
            "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\nsn: {cn}\nmail: {mail}\nuserPassword: {password}\n\n"
        )
    };
    let mut ldif = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: cn=reader,{BASE}\nobjectClass: simpleSecurityObject\nobjectClass: organizationalRole\ncn: reader\nuserPassword: reader-pw\n\n"
    );
    ldif += &person("alice", "Alice Liddell", "Alice@Example.org", "alice-pw");
    ldif += &person("bob", "Bob Builder", "bob@example.org", "bob-pw");
    ldif += &person("carol", "Carol Outsider", "carol@example.org", "carol-pw");
    ldif += &person("dave", "Dave Admin", "dave@example.org", "dave-pw");
    let member = |uid: &str| format!("member: uid={uid},{PEOPLE}\n");
    ldif += &format!(
        "dn: cn=chat,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: chat\n{}{}{}\n",
        member("alice"),
        member("bob"),
        member("dave")
    );
    ldif += &format!(
        "dn: cn=admins,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: admins\n{}\n",
        member("dave")
    );
    ldif
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} could not start ({e}); scripts/test installs slapd, ldap-utils and openssl")
        });
    if let Some(input) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost, made with openssl.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn make(dir: &Path, name: &str) -> Self {
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let (ca_key, ca_cert, key, csr, cert, ext) =
            (p("ca.key"), p("ca.crt"), p("server.key"), p("server.csr"), p("server.crt"), p("ext.cnf"));
        let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                &s(&ca_key),
                "-out",
                &s(&ca_cert),
            ],
            None,
        );
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
            None,
        );
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca_cert),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ],
            None,
        );
        Self { ca_cert, server_cert: cert, server_key: key }
    }
}

/// A running slapd with the seed directory.
pub struct Slapd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The `ldaps://` port, when started with TLS.
    pub tls_port: Option<u16>,
    pub ca: Option<TestCa>,
}

impl Slapd {
    pub async fn start() -> Self {
        Self::start_with_tls(false).await
    }

    pub async fn start_with_tls(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let ca = tls.then(|| TestCa::make(dir.path(), "good"));
        let d = dir.path().display();
        let tls_lines = match &ca {
            Some(ca) => format!(
                "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                ca.ca_cert.display(),
                ca.server_cert.display(),
                ca.server_key.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n\
             moduleload back_mdb\nmoduleload memberof\npidfile {d}/slapd.pid\n{tls_lines}\
             database mdb\nsuffix \"{BASE}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PW}\ndirectory {d}/data\n\
             overlay memberof\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by users read by anonymous auth\n"
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).unwrap();
        let port = free_port();
        let tls_port = tls.then(free_port);
        let mut slapd = Self { child: None, dir, port, tls_port, ca };
        slapd.launch().await;
        slapd.modify("ldapadd", &seed_ldif());
        slapd
    }

    fn uris(&self) -> String {
        let mut uris = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(tls_port) = self.tls_port {
            uris += &format!(" ldaps://127.0.0.1:{tls_port}/");
        }
        uris
    }

    /// Start slapd in the foreground (`-d 0`) and wait until it answers.
    async fn launch(&mut self) {
        let conf = self.dir.path().join("slapd.conf");
        let log = std::fs::File::create(self.dir.path().join("slapd.log")).unwrap();
        let child = Command::new("/usr/sbin/slapd")
            .args(["-f", conf.to_str().unwrap(), "-h", &self.uris(), "-d", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("slapd starts (scripts/test installs Debian's slapd)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default();
        panic!("slapd did not start listening:\n{log}");
    }

    pub fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Change the directory as its root: `ldapadd`, `ldapmodify` or `ldapdelete` with `input`.
    pub fn modify(&self, tool: &str, input: &str) {
        let uri = self.uri();
        run(tool, &["-x", "-H", &uri, "-D", ROOT_DN, "-w", ROOT_PW], Some(input));
    }

    /// Stop it (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Freeze it (SIGSTOP): connections are accepted by the kernel and never answered.
    /// `kill` returns before every thread has stopped, and a thread still running could
    /// answer one more request, so this returns once each of slapd's threads shows as stopped.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().unwrap().id();
        unsafe_signal(pid, libc::SIGSTOP);
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
            tasks.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                    .unwrap_or(false)
            })
        };
        for _ in 0..5_000 {
            if stopped() {
                return;
            }
            std::thread::yield_now();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("slapd ({pid}) did not stop");
    }

    pub fn thaw(&self) {
        unsafe_signal(self.child.as_ref().unwrap().id(), libc::SIGCONT);
    }

    /// Search-then-bind settings with the service account (its password in a file).
    pub fn search_config(&self) -> LdapConfig {
        let password_file = self.dir.path().join("reader.pw");
        std::fs::write(&password_file, "reader-pw\n").unwrap();
        LdapConfig {
            uri: Some(self.uri()),
            base_dn: PEOPLE.to_owned(),
            bind_dn: Some(format!("cn=reader,{BASE}")),
            bind_password_file: Some(password_file),
            filter: CHAT_FILTER.to_owned(),
            admin_filter: Some(ADMIN_FILTER.to_owned()),
            timeout: ConfigDuration::from_millis(2_000),
            ..LdapConfig::default()
        }
    }
}

fn uid(id: &str) -> ruma::OwnedUserId {
    id.try_into().unwrap()
}

/// Send `signal` to our own child `pid`.
fn unsafe_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen slapd must be woken to hear the SIGTERM.
            unsafe_signal(child.id(), libc::SIGCONT);
        }
        self.stop();
    }
}

async fn ldap_server(slapd: &Slapd, adjust: impl FnOnce(&mut LdapConfig)) -> TestServer {
    let mut ldap = slapd.search_config();
    adjust(&mut ldap);
    TestServer::start_with(move |c| c.ldap = ldap).await
}

fn password_login(user: &str, password: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})
}

async fn try_login(s: &TestServer, user: &str, password: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/login"), None, password_login(user, password)).await
}

async fn audit_records(s: &TestServer, admin: &Session, query: &str) -> Vec<Value> {
    let (status, body) =
        s.get(&format!("/_conduit/admin/v1/audit_log?limit=1000&{query}"), Some(&admin.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["records"].as_array().unwrap().clone()
}

/// A local admin account (with a password kept here), to read the audit log.
async fn local_admin(s: &TestServer) -> Session {
    s.services.accounts.create_user("root", "root-password", true).await.unwrap();
    s.login("root", "root-password", None).await
}

#[tokio::test]
async fn ldap_first_login_creates_the_account_and_the_directory_decides_every_login() {
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |_| {}).await;
    let root = local_admin(&s).await;

    // First login: the account is made with the directory's name and email.
    let alice = s.login("alice", "alice-pw", Some("FIRST")).await;
    assert_eq!(alice.user_id, "@alice:localhost");
    let (_, profile) = s.get(&format!("{V3}/profile/@alice:localhost/displayname"), None).await;
    assert_eq!(profile["displayname"], "Alice Liddell");
    let (_, threepids) = s.get(&format!("{V3}/account/3pid"), Some(&alice.token)).await;
    assert_eq!(threepids["threepids"][0]["medium"], "email", "{threepids}");
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.org", "{threepids}");
    // Not an admin (she is not in the admins group).
    let (status, _) = s.get("/_synapse/admin/v1/users/@alice:localhost/admin", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Second login, by full user ID and with the legacy `user` field; upper case is the same name.
    let again = s.login("@alice:localhost", "alice-pw", None).await;
    assert_ne!(again.device_id, alice.device_id);
    let legacy = json!({"type": "m.login.password", "user": "ALICE", "password": "alice-pw"});
    let (status, body) = s.post(&format!("{V3}/login"), None, legacy).await;
    assert_eq!((status, body["user_id"].as_str()), (StatusCode::OK, Some("@alice:localhost")), "{body}");

    // Refused: a wrong password, a directory user outside the filter, an unknown name, and
    // names carrying filter syntax (nothing is ever made for them).
    expect_error(try_login(&s, "alice", "wrong").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(try_login(&s, "alice", "").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(try_login(&s, "carol", "carol-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(try_login(&s, "nobody", "x").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    for hostile in ["*", "alice)(uid=*", "*)(|(uid=*", "al\u{0}ice", "al*", "alice\\2a"] {
        expect_error(try_login(&s, hostile, "alice-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    let carol = s.services.users.get(&uid("@carol:localhost")).unwrap();
    assert!(carol.is_none(), "no account for a user outside the filter");

    // Local password accounts keep working beside the directory.
    let local = s.register("localuser", "local-password").await;
    s.login("localuser", "local-password", None).await;

    // The directory keeps alice's password: she cannot change it here, and clients are told.
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], false, "{caps}");
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&local.token)).await;
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true, "{caps}");
    let change = json!({"new_password": "new-pw-123", "logout_devices": false});
    let body = expect_error(
        s.post(&format!("{V3}/account/password"), Some(&alice.token), change).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert!(body["error"].as_str().unwrap().contains("LDAP"), "{body}");
    // Nor can an admin set one for her: it would let her in after she left the directory.
    let reset = json!({"new_password": "backdoor-pw", "logout_devices": false});
    let path = "/_synapse/admin/v1/reset_password/@alice:localhost";
    expect_error(s.post(path, Some(&root.token), reset).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(try_login(&s, "alice", "backdoor-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // User-interactive auth asks the directory: deleting a device takes her LDAP password.
    let path = format!("{V3}/delete_devices");
    let (status, challenge) = s.post(&path, Some(&alice.token), json!({"devices": [again.device_id]})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str();
    let wrong = json!({"devices": [again.device_id], "auth": password_auth("alice", "wrong", session)});
    let (status, body) = s.post(&path, Some(&alice.token), wrong).await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")), "{body}");
    let right = json!({"devices": [again.device_id], "auth": password_auth("alice", "alice-pw", session)});
    let (status, body) = s.post(&path, Some(&alice.token), right).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every login is audited, the first one as the account's creation.
    let logins = audit_records(&s, &root, "action=login&target=@alice:localhost").await;
    let ldap_logins: Vec<&Value> = logins.iter().filter(|r| r["params"]["auth_provider"] == "ldap").collect();
    assert_eq!(ldap_logins.len(), 3, "{logins:?}");
    assert_eq!(ldap_logins.iter().filter(|r| r["params"]["created"] == true).count(), 1, "{logins:?}");
    let failures: Vec<Value> = audit_records(&s, &root, "action=login")
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "failure")
        .collect();
    assert!(failures.len() >= 4, "{failures:?}");
}

#[tokio::test]
async fn ldap_admin_filter_sets_the_admin_flag_at_login() {
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |_| {}).await;
    let dave = s.login("dave", "dave-pw", None).await;
    let (status, body) = s.get("/_synapse/admin/v1/users/@dave:localhost/admin", Some(&dave.token)).await;
    assert_eq!((status, &body["admin"]), (StatusCode::OK, &json!(true)), "{body}");

    // Out of the admins group: the next login takes the flag away.
    slapd.modify(
        "ldapmodify",
        &format!("dn: cn=admins,ou=groups,{BASE}\nchangetype: modify\nreplace: member\nmember: uid=alice,{PEOPLE}\n"),
    );
    s.login("dave", "dave-pw", None).await;
    let (status, _) = s.get("/_synapse/admin/v1/users/@dave:localhost/admin", Some(&dave.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ldap_periodic_sync_deactivates_users_gone_from_the_directory() {
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |l| l.sync_interval = Some(ConfigDuration::from_millis(3_600_000))).await;
    let root = local_admin(&s).await;
    let alice = s.login("alice", "alice-pw", None).await;
    let bob = s.login("bob", "bob-pw", None).await;
    let dave = s.login("dave", "dave-pw", None).await;

    // Alice's entry is deleted, bob leaves the chat group, dave stops being an admin.
    slapd.modify("ldapdelete", &format!("uid=alice,{PEOPLE}\n"));
    slapd.modify(
        "ldapmodify",
        &format!(
            "dn: cn=chat,ou=groups,{BASE}\nchangetype: modify\ndelete: member\nmember: uid=bob,{PEOPLE}\n\n\
             dn: cn=admins,ou=groups,{BASE}\nchangetype: modify\nreplace: member\nmember: uid=carol,{PEOPLE}\n"
        ),
    );
    // Refused at login at once, before any sync.
    expect_error(try_login(&s, "bob", "bob-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (status, _) = s.get(&format!("{V3}/account/whoami"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "existing sessions live until the sync");

    // An hour on the server's clock: the sync deactivates both and demotes dave.
    let users = &s.services.users;
    let deactivated =
        |name: &str| users.get(&uid(&format!("@{name}:localhost"))).unwrap().unwrap().deactivated;
    s.advance_until(3_600_000, "the LDAP sync", || deactivated("alice") && deactivated("bob")).await;
    for who in [&alice, &bob] {
        let (status, body) = s.get(&format!("{V3}/account/whoami"), Some(&who.token)).await;
        assert_eq!((status, body["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")));
    }
    assert!(!deactivated("dave"));
    for _ in 0..200 {
        if !s.services.accounts.is_admin(&uid("@dave:localhost")).unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = s.get("/_synapse/admin/v1/users/@dave:localhost/admin", Some(&dave.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "dave lost the admin flag");

    // The deactivations are audited, by the server.
    let records = audit_records(&s, &root, "action=account.deactivate").await;
    let targets: Vec<&str> = records.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert!(targets.contains(&"@alice:localhost") && targets.contains(&"@bob:localhost"), "{records:?}");
    assert!(records.iter().all(|r| r["actor"]["kind"] == "server"), "{records:?}");

    // A directory that lists nobody (a base DN with no people under it) deactivates nobody.
    {
        use conduit::reload::LiveReload;
        let mut config = (*s.services.config).clone();
        config.ldap = slapd.search_config();
        config.ldap.base_dn = format!("ou=groups,{BASE}");
        s.services.ldap.apply(&config).unwrap();
        let report = s.services.ldap_sync.sync_once().await.unwrap();
        assert!(report.deactivated.is_empty() && report.checked == 0, "{report:?}");
        assert!(!deactivated("dave"));
    }

    // A directory that answers nothing deactivates nobody (a stopped slapd here).
    drop(slapd);
    let report = s.services.ldap_sync.sync_once().await;
    assert!(report.is_err(), "a sync without the directory fails and changes nothing");
    assert!(!deactivated("dave"));
}

#[tokio::test]
async fn ldap_direct_bind_with_a_dn_template() {
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |l| {
        l.bind_dn = Some(format!("uid={{username}},{PEOPLE}"));
        l.bind_password_file = None;
    })
    .await;
    let alice = s.login("alice", "alice-pw", None).await;
    let (_, profile) = s.get(&format!("{V3}/profile/{}/displayname", alice.user_id), None).await;
    assert_eq!(profile["displayname"], "Alice Liddell");
    let dave = s.login("dave", "dave-pw", None).await;
    let (status, _) = s.get("/_synapse/admin/v1/users/@dave:localhost/admin", Some(&dave.token)).await;
    assert_eq!(status, StatusCode::OK, "the admin filter is read as the user");
    expect_error(try_login(&s, "alice", "bob-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(try_login(&s, "carol", "carol-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // A DN-special name is escaped into the template, so it binds as nobody.
    expect_error(try_login(&s, "alice,ou=people", "alice-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

#[tokio::test]
async fn ldap_down_or_hung_answers_503_within_the_timeout() {
    let mut slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |l| l.timeout = ConfigDuration::from_millis(1_000)).await;
    s.login("alice", "alice-pw", None).await;
    s.register("localuser", "local-password").await;

    // Hung: the connection is accepted and never answered; the deadline ends the wait.
    slapd.freeze();
    let started = Instant::now();
    let body =
        expect_error(try_login(&s, "alice", "alice-pw").await, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN");
    let waited = started.elapsed();
    assert!(body["error"].as_str().unwrap().contains("LDAP"), "{body}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    // Other requests are served meanwhile (no worker is blocked).
    let (status, _) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(status, StatusCode::OK);
    slapd.thaw();
    s.login("alice", "alice-pw", None).await;

    // Down: refused connections answer at once.
    slapd.stop();
    let started = Instant::now();
    expect_error(try_login(&s, "alice", "alice-pw").await, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_millis(900), "took {:?}", started.elapsed());
    // Local passwords still get in while the directory is down; a wrong one learns only
    // that the directory is down.
    s.login("localuser", "local-password", None).await;
    expect_error(try_login(&s, "localuser", "wrong").await, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN");
}

#[tokio::test]
async fn ldap_starttls_and_ldaps_check_the_ca_file() {
    let slapd = Slapd::start_with_tls(true).await;
    let ca = slapd.ca.as_ref().unwrap();
    let ca_file = ca.ca_cert.clone();

    // StartTLS on the plain port, verified against the CA.
    let ca_for_starttls = ca_file.clone();
    let s = ldap_server(&slapd, move |l| {
        l.start_tls = true;
        l.ca_file = Some(ca_for_starttls);
    })
    .await;
    s.login("alice", "alice-pw", None).await;
    drop(s);

    // ldaps:// on its own port.
    let tls_port = slapd.tls_port.unwrap();
    let s = ldap_server(&slapd, move |l| {
        l.uri = Some(format!("ldaps://127.0.0.1:{tls_port}"));
        l.ca_file = Some(ca_file);
    })
    .await;
    s.login("bob", "bob-pw", None).await;
    drop(s);

    // Another CA: the certificate is refused, and so is the login, with the clear error.
    let other = TestCa::make(slapd.dir.path(), "other");
    for starttls in [true, false] {
        let other_ca = other.ca_cert.clone();
        let s = ldap_server(&slapd, move |l| {
            if starttls {
                l.start_tls = true;
            } else {
                l.uri = Some(format!("ldaps://127.0.0.1:{tls_port}"));
            }
            l.ca_file = Some(other_ca);
        })
        .await;
        expect_error(try_login(&s, "alice", "alice-pw").await, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN");
    }
}

/// A reload (what SIGHUP does) turns LDAP on, reads the password file again, and a
/// configuration whose file cannot be read is refused whole.
#[tokio::test]
async fn ldap_settings_reload_live() {
    use conduit::reload::LiveReload;
    let slapd = Slapd::start().await;
    let s = TestServer::start().await;
    expect_error(try_login(&s, "alice", "alice-pw").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    let mut config = (*s.services.config).clone();
    config.ldap = slapd.search_config();
    config.ldap.bind_password_file = Some(slapd.dir.path().join("missing.pw"));
    let error = s.services.ldap.check(&config).unwrap_err();
    assert!(error.contains("bind_password_file"), "{error}");

    config.ldap = slapd.search_config();
    s.services.ldap.check(&config).unwrap();
    s.services.ldap.apply(&config).unwrap();
    s.login("alice", "alice-pw", None).await;

    // A wrong service password in the file, read again at the reload: the directory
    // refuses the search, and logins say the directory cannot be used.
    std::fs::write(config.ldap.bind_password_file.as_ref().unwrap(), "not-the-password\n").unwrap();
    s.services.ldap.apply(&config).unwrap();
    expect_error(try_login(&s, "alice", "alice-pw").await, StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN");
}

/// matrix-nio logs in with an LDAP password, as a bot or script would.
#[tokio::test]
async fn matrix_nio_logs_in_with_an_ldap_password() {
    let python = crate::sdk::provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |_| {}).await;
    crate::sdk::run_client_check(
        "matrix-nio LDAP login",
        python,
        vec![
            crate::sdk::script("sdk/nio_login_external.py"),
            "ldap".into(),
            s.base.clone().into(),
            "bob".into(),
            "bob-pw".into(),
        ],
    )
    .await;
}

/// Element Web in headless Chromium: a directory user signs in on Element's login page with
/// the directory's password (see tests/web/element.mjs, scenario `ldap`).
#[tokio::test]
async fn element_web_signs_in_with_an_ldap_password() {
    use crate::sdk::{client_check, provided_by_scripts_test, script};
    let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for playwright-core");
    let chromium = provided_by_scripts_test("CONDUIT_TEST_CHROMIUM", "Debian's chromium");
    let element = provided_by_scripts_test("CONDUIT_ELEMENT_WEB", "Element Web's built static files");
    let slapd = Slapd::start().await;
    let s = ldap_server(&slapd, |_| {}).await;
    let artifacts = tempfile::Builder::new().prefix("conduit-element-ldap-").tempdir().expect("temp dir");
    let result = client_check(
        "Element Web LDAP sign-in",
        node,
        vec![
            script("web/element.mjs"),
            s.base.clone().into(),
            element,
            artifacts.path().into(),
            chromium,
            "ldap".into(),
            "alice".into(),
            "alice-pw".into(),
            "Alice Liddell".into(),
            "alice@example.org".into(),
        ],
    )
    .await;
    if let Err(failure) = result {
        let kept = artifacts.keep();
        panic!("{failure}\nscreenshots: {}", kept.display());
    }
}
