//! Media in an S3-compatible bucket (`media_backend = "s3"`), end to end: a real S3 server
//! (moto's, from PyPI, which checks every request's signature) on loopback, conduit storing
//! uploads and thumbnails there, deleting them with the media, two processes on one
//! PostgreSQL database serving each other's uploads from the shared bucket, and the start-up
//! check refusing a wrong key or a missing bucket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use conduit::config::{Config, MediaBackend};
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    harness::{Session, TestServer, free_port, start_sharing_pair_with, test_config},
    media::upload,
};

const V1: &str = "/_matrix/client/v1/media";
const BUCKET: &str = "conduit-media";
const PREFIX: &str = "media/";

/// moto's S3 server with one bucket, run by `tests/s3/server.py` in the test Python.
struct S3Server {
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl S3Server {
    fn start() -> Self {
        let python =
            crate::sdk::provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with moto[server]");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/server.py");
        let mut child = Command::new(python)
            .args([script, &port.to_string(), BUCKET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the S3 test server starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("S3 server said {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "the S3 test server did not start: is moto[server] installed in CONDUIT_TEST_PYTHON? \
                 (scripts/test installs scripts/requirements-test.txt)"
            )
        });
        assert_eq!(ready["event"], "ready", "{ready}");
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key_id: ready["access_key_id"].as_str().unwrap().to_owned(),
            secret_access_key: ready["secret_access_key"].as_str().unwrap().to_owned(),
            child,
            stdin,
            lines,
        }
    }

    /// Point `config`'s media at the bucket.
    fn configure(&self, config: &mut Config) {
        config.media_backend = MediaBackend::S3;
        config.media_s3.endpoint = Some(self.endpoint.clone());
        config.media_s3.bucket = Some(BUCKET.to_owned());
        config.media_s3.access_key_id = Some(self.access_key_id.clone());
        config.media_s3.secret_access_key = Some(self.secret_access_key.clone());
        config.media_s3.prefix = PREFIX.to_owned();
    }

    /// Every object key in the bucket, as the S3 API lists them.
    fn objects(&mut self) -> Vec<String> {
        writeln!(self.stdin, "list").unwrap();
        self.stdin.flush().unwrap();
        let answer =
            self.lines.recv_timeout(Duration::from_secs(30)).expect("the S3 server lists the bucket");
        assert_eq!(answer["event"], "objects", "{answer}");
        answer["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn object_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}content/{hex}")
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(image).write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn new_user(s: &TestServer, name: &str) -> Session {
    s.register(name, &format!("{name}-password-1")).await
}

async fn download(s: &TestServer, who: &Session, mxc: &str) -> reqwest::Response {
    let path = mxc.strip_prefix("mxc://").unwrap();
    s.http.get(format!("{}{V1}/download/{path}", s.base)).bearer_auth(&who.token).send().await.unwrap()
}

async fn thumbnail(s: &TestServer, who: &Session, mxc: &str, query: &str) -> (u32, u32) {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let resp = s
        .http
        .get(format!("{}{V1}/thumbnail/{path}?{query}", s.base))
        .bearer_auth(&who.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{query}");
    let image = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    (image.width(), image.height())
}

/// Files under the media directory's `content/` (none with a bucket).
fn local_content_files(dir: &std::path::Path) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .map(|e| e.unwrap())
            .map(|e| if e.file_type().unwrap().is_dir() { count(&e.path()) } else { 1 })
            .sum()
    }
    count(&dir.join("content")) + count(&dir.join("tmp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_in_s3_uploads_downloads_thumbnails_and_deletes_objects() {
    let mut bucket = S3Server::start();
    let s = TestServer::start_with(|c| {
        bucket.configure(c);
        c.media_retention_days = Some(30);
    })
    .await;
    let alice = new_user(&s, "alice").await;
    let original = png(1000, 500);
    let mxc = upload(&s, &alice, original.clone(), "image/png", Some("photo.png")).await;

    // The bytes are in the bucket under their SHA-256, and nowhere on local disk.
    assert_eq!(bucket.objects(), vec![object_of(&original)]);
    let media_dir = s.services.config.media_dir();
    assert_eq!(local_content_files(&media_dir), 0, "nothing stored or left in {}", media_dir.display());

    let resp = download(&s, &alice, &mxc).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], original.len().to_string().as_str());
    assert_eq!(resp.bytes().await.unwrap(), original, "the download is the upload");

    // A range is served from the object too.
    let path = mxc.strip_prefix("mxc://").unwrap();
    let resp = s
        .http
        .get(format!("{}{V1}/download/{path}", s.base))
        .bearer_auth(&alice.token)
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), original[100..200]);

    // A stored thumbnail is made from a copy of the object and stored as an object itself;
    // asked again, it is served from the bucket.
    assert_eq!(thumbnail(&s, &alice, &mxc, "width=96&height=96&method=crop").await, (96, 96));
    let objects = bucket.objects();
    assert_eq!(objects.len(), 2, "the original and its thumbnail: {objects:?}");
    assert_eq!(thumbnail(&s, &alice, &mxc, "width=96&height=96&method=crop").await, (96, 96));
    assert_eq!(s.services.media.thumbnails_made(), 1);
    assert_eq!(local_content_files(&media_dir), 0, "the temporary copy is gone");

    // Deleting the media through the admin API deletes its objects.
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    let (status, body) =
        s.call(Method::DELETE, &format!("/_synapse/admin/v1/media/{path}"), Some(&root.token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bucket.objects(), Vec::<String>::new(), "the original and the thumbnail are deleted");
    assert_eq!(download(&s, &alice, &mxc).await.status(), StatusCode::NOT_FOUND);

    // Retention removes the objects of expired media as well.
    let old = upload(&s, &alice, b"old notes".to_vec(), "text/plain", None).await;
    assert_eq!(bucket.objects(), vec![object_of(b"old notes")]);
    s.clock.advance_ms(31 * 24 * 3600 * 1000);
    let report = s.services.media.apply_retention().await.unwrap();
    assert_eq!((report.media, report.bytes_freed), (1, 9));
    assert_eq!(bucket.objects(), Vec::<String>::new());
    assert_eq!(download(&s, &alice, &old).await.status(), StatusCode::NOT_FOUND);

    // Thumbnails of what is no image are refused as on the filesystem (the format is
    // sniffed from a ranged read of the object's start, the empty object included).
    for (bytes, content_type) in [(vec![0x42; 3 * 1024 * 1024], "video/mp4"), (Vec::new(), "image/png")] {
        let mxc = upload(&s, &alice, bytes, content_type, None).await;
        let path = mxc.strip_prefix("mxc://").unwrap();
        let resp = s
            .http
            .get(format!("{}{V1}/thumbnail/{path}?width=32&height=32&method=crop", s.base))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{content_type}");
        assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_UNKNOWN");
    }
    assert_eq!(local_content_files(&media_dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_database_serve_each_others_media_from_the_bucket() {
    let mut bucket = S3Server::start();
    let (a, b) = start_sharing_pair_with(|c| bucket.configure(c)).await;
    let alice = new_user(&a, "alice").await;
    let bob = b.login("alice", "alice-password-1", None).await;

    let picture = png(400, 300);
    let from_a = upload(&a, &alice, picture.clone(), "image/png", None).await;
    let resp = download(&b, &bob, &from_a).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), picture, "B serves what A stored");
    // B makes the thumbnail; A serves the stored one without making it again.
    assert_eq!(thumbnail(&b, &bob, &from_a, "width=32&height=32&method=crop").await, (32, 32));
    assert_eq!(thumbnail(&a, &alice, &from_a, "width=32&height=32&method=crop").await, (32, 32));
    assert_eq!((b.services.media.thumbnails_made(), a.services.media.thumbnails_made()), (1, 0));

    let text = b"uploaded through B".to_vec();
    let from_b = upload(&b, &bob, text.clone(), "text/plain", None).await;
    assert_eq!(download(&a, &alice, &from_b).await.bytes().await.unwrap(), text, "A serves what B stored");
    let objects = bucket.objects();
    assert_eq!(objects.len(), 3, "two uploads and a thumbnail: {objects:?}");
    assert!(objects.contains(&object_of(&picture)) && objects.contains(&object_of(&text)), "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_a_missing_bucket_stops_the_server_at_start() {
    let bucket = S3Server::start();
    let error_of = |adjust: &dyn Fn(&mut Config)| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        bucket.configure(&mut config);
        adjust(&mut config);
        match conduit::server::Server::build(config) {
            Ok(_) => panic!("the server started"),
            Err(e) => e.to_string(),
        }
    };

    let wrong_secret = error_of(&|c| c.media_s3.secret_access_key = Some("not-the-secret".into()));
    assert!(
        wrong_secret.contains(&format!("bucket `{BUCKET}`"))
            && wrong_secret.contains("403")
            && wrong_secret.contains("media_s3.secret_access_key"),
        "{wrong_secret}"
    );
    let unknown_key = error_of(&|c| c.media_s3.access_key_id = Some("AKIANOSUCHKEY0000000".into()));
    assert!(unknown_key.contains("403"), "{unknown_key}");

    let no_bucket = error_of(&|c| c.media_s3.bucket = Some("no-such-bucket".into()));
    assert!(no_bucket.contains("no such bucket") && no_bucket.contains("no-such-bucket"), "{no_bucket}");

    let unreachable = error_of(&|c| c.media_s3.endpoint = Some(format!("http://127.0.0.1:{}", free_port())));
    assert!(unreachable.contains("HEAD bucket"), "{unreachable}");

    let missing = error_of(&|c| c.media_s3.secret_access_key = None);
    assert!(missing.contains("media_s3.secret_access_key"), "{missing}");
}
