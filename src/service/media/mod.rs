//! The content repository: local media uploaded in one piece or reserved first and uploaded
//! later, served whole or as thumbnails, purged by age. Owns the `media`, `media_pending`,
//! `media_pending_by_user`, `media_thumbnails` and `media_file_refs` tables and the media
//! directory (`files`).
//!
//! Bytes never pass through memory whole: uploads stream to a temporary file while they are
//! hashed, downloads stream from the file or the object. Where the bytes are kept is
//! `store::ContentStore`'s business: the media directory, or an S3-compatible bucket. Content is stored once per SHA-256; each media
//! item and thumbnail holds a reference row on its file, and a file is deleted only with its
//! last reference, under the lock that also orders placing files.
//!
//! Other servers' media (their `mxc://` URIs) is kept here once fetched (`remote_media`,
//! `store_remote`): `remote::RemoteMedia` fetches it over federation on first request. Its
//! thumbnails are made here from the fetched original, as for local media.

pub mod admin;
pub mod files;
pub mod opengraph;
pub mod preview;
pub mod remote;
pub mod s3;
pub mod store;
pub mod thumbnail;

use std::{
    collections::HashSet,
    io,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ruma::{OwnedMxcUri, OwnedServerName, OwnedUserId, ServerName, UserId};
use tokio::sync::{Notify, Semaphore};

use self::{
    files::{SinkError, StagedFile, UploadSink},
    store::{ContentStore, LocalCopy},
    thumbnail::{ImageInfo, ThumbnailError},
};
use super::clock::Clock;
use crate::{
    Error, Result,
    config::Config,
    matrix::media::{ResizeMethod, ThumbnailBox, is_valid_media_id, original_fits, thumbnail_box},
    service::passwords::random_string,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        locks::KeyedLocks,
        tables::{
            ContentHash, MEDIA, MEDIA_FILE_REFS, MEDIA_PENDING, MEDIA_PENDING_BY_USER, MEDIA_THUMBNAILS,
            MediaRecord, PendingMediaRecord, REMOTE_MEDIA, RemoteMediaRecord, ThumbnailRecord,
        },
    },
};

/// Length of new media IDs: 24 alphanumerics, about 143 bits, not guessable.
const MEDIA_ID_LEN: usize = 24;
/// Longest wait for a reserved ID's content that a download may ask for.
const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);
/// An animated original at most this large is served as its own animated thumbnail when a
/// client asks for `animated=true`; larger ones get a still thumbnail of the first frame.
pub const MAX_ANIMATED_ORIGINAL: u64 = 4 * 1024 * 1024;
/// Longest accepted content type and file name of an upload.
const MAX_CONTENT_TYPE_LEN: usize = 255;
const MAX_FILENAME_LEN: usize = 1024;
/// Media deleted per batch by a purge.
const PURGE_BATCH: usize = 256;

/// Which family of endpoints asks: the authenticated `/_matrix/client/v1/media/*` ones, or
/// the legacy unauthenticated `/_matrix/media/v3/*` ones, which do not serve frozen media.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Authenticated,
    Legacy,
}

/// Content ready to send.
pub struct Content {
    pub body: ContentBody,
    pub size: u64,
    pub content_type: String,
    pub filename: Option<String>,
}

/// Where the bytes come from: a file opened at its start, an object in the bucket being
/// downloaded, or memory (thumbnails made for a size that is not stored).
pub enum ContentBody {
    File(tokio::fs::File),
    Reader(Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    Bytes(Bytes),
}

/// A thumbnail request, as the client worded it.
#[derive(Clone, Copy, Debug)]
pub struct ThumbnailRequest {
    pub width: u32,
    pub height: u32,
    pub method: ResizeMethod,
    /// `Some(true)`: an animated thumbnail is welcome; otherwise it must not be animated.
    pub animated: Option<bool>,
}

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub media: u64,
    /// Bytes of content files deleted (content still used by other media stays).
    pub bytes_freed: u64,
}

/// The media settings read from the configuration.
struct Settings {
    server_name: OwnedServerName,
    max_upload_size: u64,
    legacy_freeze: bool,
    max_pending: u32,
    unused_expiration_ms: u64,
    max_image_pixels: u64,
    retention_ms: Option<u64>,
}

/// The tables and the directory, shared with blocking threads.
struct Core {
    store: Arc<dyn KvStore>,
    media: Table<String, MediaRecord>,
    pending: Table<String, PendingMediaRecord>,
    pending_by_user: Table<(OwnedUserId, String), u64>,
    thumbnails: Table<ThumbnailKey, ThumbnailRecord>,
    remote: Table<(String, String), RemoteMediaRecord>,
    refs: Table<(ContentHash, String), ()>,
    files: ContentStore,
    /// Held while a file is placed or deleted together with its reference rows, so content
    /// is never deleted between another upload finding it present and referencing it.
    file_lock: Mutex<()>,
}

pub struct Media {
    core: Arc<Core>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    /// Woken whenever a reserved ID receives its content; downloads waiting for it re-check.
    uploaded: Notify,
    /// Reserved IDs whose upload is streaming now: a second upload to the same ID is refused
    /// while the first runs.
    uploading: Mutex<HashSet<String>>,
    /// Bounds concurrent image decoding to the cores there are, so thumbnails can neither
    /// starve the runtime's blocking pool nor multiply decoder memory.
    thumbnailers: Semaphore,
    /// Held while a stored thumbnail is being made, per thumbnail.
    making: KeyedLocks<ThumbnailKey>,
    thumbnails_made: AtomicU64,
}

fn io_error(context: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::internal(format!("{context}: {e}"))
}

/// What a download or thumbnail needs of a visible media item, local or fetched.
struct Found {
    sha256: ContentHash,
    size: u64,
    content_type: Option<String>,
    filename: Option<String>,
    /// Its thumbnails' key in `media_thumbnails`.
    thumbnails_key: String,
}

/// The `media_thumbnails` key of another server's media item.
fn remote_key(server_name: &ServerName, media_id: &str) -> String {
    format!("{server_name}/{media_id}")
}

fn media_ref(media_id: &str) -> String {
    format!("media:{media_id}")
}

/// The reference a stored thumbnail holds on its file, from its `media_thumbnails` key.
fn thumbnail_ref((media_id, width, height, method): &ThumbnailKey) -> String {
    format!("thumbnail:{media_id}:{width}x{height}:{method}")
}

/// `media_thumbnails` key: media ID, width, height, method.
type ThumbnailKey = (String, u64, u64, String);

fn not_found() -> Error {
    Error::not_found("Media not found")
}

fn sink_error(e: SinkError) -> Error {
    match e {
        SinkError::TooLarge => Error::too_large("Content is larger than the server accepts"),
        SinkError::Io(e) => Error::internal(format!("writing media: {e}")),
    }
}

fn thumbnail_error(e: ThumbnailError) -> Error {
    match e {
        ThumbnailError::Unsupported => Error::unknown("Cannot generate thumbnails for the requested content"),
        ThumbnailError::TooLarge => Error::too_large("Content is too large to thumbnail"),
        ThumbnailError::Corrupt(detail) => {
            Error::unknown(format!("Cannot generate thumbnails for the requested content: {detail}"))
        }
        ThumbnailError::Io(e) => Error::internal(format!("reading an image: {e}")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("blocking task: {e}")))?
}

impl Core {
    /// Place a staged file and commit `batch` with a reference row for it, under the file
    /// lock. A file placed for a batch that then fails to commit is removed again.
    fn commit_with_file(&self, staged: StagedFile, reference: String, batch: WriteBatch) -> Result<()> {
        self.commit_with_file_for(staged, reference, batch, None).map(drop)
    }

    /// As `commit_with_file`, for something that belongs to media item `owner` (a thumbnail):
    /// nothing is committed, and `false` returned, if the item was deleted meanwhile, so a
    /// purge racing with thumbnailing leaves no row or file behind.
    fn commit_with_file_for(
        &self,
        staged: StagedFile,
        reference: String,
        mut batch: WriteBatch,
        owner: Option<&String>,
    ) -> Result<bool> {
        let hash = staged.hash;
        // In a bucket the upload itself happens here, outside the lock.
        let uploaded_ahead = self.files.upload_ahead(&staged).map_err(io_error("storing media"))?;
        let _guard = self.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(owner) = owner
            && !self.owner_exists(owner)?
        {
            if uploaded_ahead && !self.is_referenced(&hash)? {
                let _ = self.files.remove(&hash);
            }
            return Ok(false);
        }
        self.refs.put(&mut batch, &(hash, reference), &())?;
        let placed = self.files.place(staged, uploaded_ahead).map_err(io_error("placing media file"))?;
        if let Err(e) = self.store.write(batch) {
            // Content sent ahead of the lock may have been referenced by another upload since.
            if placed && !self.is_referenced(&hash).unwrap_or(true) {
                let _ = self.files.remove(&hash);
            }
            return Err(e.into());
        }
        Ok(true)
    }

    /// Whether the media item a thumbnail key names is still there: a local media ID, or
    /// `<server>/<media_id>` of fetched remote media.
    fn owner_exists(&self, owner: &str) -> Result<bool> {
        Ok(match owner.split_once('/') {
            Some((server, id)) => self.remote.contains(&(server.to_owned(), id.to_owned()))?,
            None => self.media.contains(&owner.to_owned())?,
        })
    }

    fn is_referenced(&self, hash: &ContentHash) -> Result<bool> {
        Ok(self.refs.scan_prefix(hash, Direction::Forward)?.next().transpose()?.is_some())
    }

    /// Delete other servers' media items kept here (`(server, media_id)`), their
    /// thumbnails and every file no longer referenced.
    fn delete_remote(&self, keys: &[(String, String)]) -> Result<PurgeReport> {
        let _guard = self.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = WriteBatch::new();
        let mut hashes = Vec::new();
        let mut report = PurgeReport::default();
        for key in keys {
            let Some(record) = self.remote.get(key)? else { continue };
            self.remote.delete(&mut batch, key);
            self.refs.delete(&mut batch, &(record.sha256, format!("remote:{}/{}", key.0, key.1)));
            hashes.push((record.sha256, record.size));
            let owner = format!("{}/{}", key.0, key.1);
            for row in self.thumbnails.scan_prefix(&owner, Direction::Forward)? {
                let (thumb_key, thumb) = row?;
                self.refs.delete(&mut batch, &(thumb.sha256, thumbnail_ref(&thumb_key)));
                self.thumbnails.delete(&mut batch, &thumb_key);
                hashes.push((thumb.sha256, thumb.size));
            }
            report.media += 1;
        }
        self.store.write(batch)?;
        self.remove_unreferenced(hashes, &mut report)?;
        Ok(report)
    }

    /// Remove the files of `hashes` nothing references any more.
    fn remove_unreferenced(
        &self,
        mut hashes: Vec<(ContentHash, u64)>,
        report: &mut PurgeReport,
    ) -> Result<()> {
        hashes.sort_by_key(|(hash, _)| hash.0);
        hashes.dedup_by_key(|(hash, _)| hash.0);
        for (hash, size) in hashes {
            if !self.is_referenced(&hash)? {
                self.files.remove(&hash).map_err(io_error("deleting media file"))?;
                report.bytes_freed += size;
            }
        }
        Ok(())
    }

    /// Delete media items, their thumbnails and every file no longer referenced.
    fn delete_media(&self, ids: &[String]) -> Result<PurgeReport> {
        let _guard = self.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = WriteBatch::new();
        let mut hashes = Vec::new();
        let mut report = PurgeReport::default();
        for id in ids {
            let Some(record) = self.media.get(id)? else { continue };
            self.media.delete(&mut batch, id);
            self.refs.delete(&mut batch, &(record.sha256, media_ref(id)));
            hashes.push((record.sha256, record.size));
            for row in self.thumbnails.scan_prefix(id, Direction::Forward)? {
                let (key, thumb) = row?;
                self.refs.delete(&mut batch, &(thumb.sha256, thumbnail_ref(&key)));
                self.thumbnails.delete(&mut batch, &key);
                hashes.push((thumb.sha256, thumb.size));
            }
            report.media += 1;
        }
        self.store.write(batch)?;
        self.remove_unreferenced(hashes, &mut report)?;
        Ok(report)
    }
}

impl Media {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, config: &Config) -> Result<Self> {
        let files = ContentStore::open(config).map_err(Error::internal)?;
        let core = Core {
            store: Arc::clone(store),
            media: MEDIA.open(store),
            pending: MEDIA_PENDING.open(store),
            pending_by_user: MEDIA_PENDING_BY_USER.open(store),
            thumbnails: MEDIA_THUMBNAILS.open(store),
            remote: REMOTE_MEDIA.open(store),
            refs: MEDIA_FILE_REFS.open(store),
            files,
            file_lock: Mutex::new(()),
        };
        let settings = Settings {
            server_name: config.server_name.clone(),
            max_upload_size: config.max_upload_size,
            legacy_freeze: config.media_legacy_freeze,
            max_pending: config.max_pending_media_uploads,
            unused_expiration_ms: config.media_unused_expiration_secs.saturating_mul(1000),
            max_image_pixels: config.max_image_pixels,
            retention_ms: config.media_retention_days.map(|d| u64::from(d) * 24 * 3600 * 1000),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            core: Arc::new(core),
            settings,
            clock,
            uploaded: Notify::new(),
            uploading: Mutex::new(HashSet::new()),
            thumbnailers: Semaphore::new(cores),
            making: KeyedLocks::new(),
            thumbnails_made: AtomicU64::new(0),
        })
    }

    /// For a backup: run `snapshot` (which copies the database) and then copy every media
    /// file into the media directory `dest`, while no file is placed or deleted, so every
    /// media row the snapshot holds has its file in `dest`. Uploads wait to place their file
    /// meanwhile (the copy hard-links when it can, so this is short on one filesystem).
    /// Returns the files and bytes copied.
    pub fn copy_files_with_snapshot(
        &self,
        dest: &Path,
        snapshot: impl FnOnce() -> Result<()>,
    ) -> Result<(u64, u64)> {
        let _guard = self.core.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot()?;
        self.core.files.copy_all_to(dest).map_err(io_error("copying media files"))
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_size(&self) -> u64 {
        self.settings.max_upload_size
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.settings.server_name))
    }

    /// The media ID of a local `mxc://` URI's parts; other servers' media is not found here.
    fn local_id<'a>(&self, server_name: &ServerName, media_id: &'a str) -> Result<&'a str> {
        if server_name != self.settings.server_name {
            return Err(Error::not_found("Remote media is not available: this server does not federate"));
        }
        if !is_valid_media_id(media_id) {
            return Err(not_found());
        }
        Ok(media_id)
    }

    /// A sink for new content of at most `limit` bytes.
    pub async fn sink(&self, limit: u64) -> Result<UploadSink> {
        let core = Arc::clone(&self.core);
        blocking(move || core.files.temp_file().map_err(io_error("creating a temporary media file")))
            .await
            .map(|(file, path)| UploadSink::new(file, path, limit))
    }

    /// Write a body into `sink` and stage it; the sink's limit answers `M_TOO_LARGE`.
    pub async fn write(&self, sink: &mut UploadSink, data: &[u8]) -> Result<()> {
        sink.write(data).await.map_err(sink_error)
    }

    /// Finish a sink's content.
    pub async fn stage(&self, sink: UploadSink) -> Result<StagedFile> {
        sink.finish().await.map_err(sink_error)
    }

    fn check_upload_fields(content_type: &Option<String>, filename: &Option<String>) -> Result<()> {
        if content_type.as_ref().is_some_and(|c| c.len() > MAX_CONTENT_TYPE_LEN) {
            return Err(Error::invalid_param("Content-Type is too long"));
        }
        if filename.as_ref().is_some_and(|f| f.len() > MAX_FILENAME_LEN) {
            return Err(Error::invalid_param("File name is too long"));
        }
        Ok(())
    }

    fn record(
        &self,
        uploader: &UserId,
        staged: &StagedFile,
        content_type: Option<String>,
        filename: Option<String>,
        source_url: Option<String>,
    ) -> MediaRecord {
        MediaRecord {
            sha256: staged.hash,
            size: staged.size,
            // An empty header is no content type.
            content_type: content_type.filter(|c| !c.trim().is_empty()),
            filename: filename.filter(|f| !f.is_empty()),
            uploader: uploader.to_owned(),
            created_ms: self.clock.now_ms(),
            frozen: self.settings.legacy_freeze,
            source_url,
            quarantined_by: None,
            protected: false,
        }
    }

    /// Store staged content as a new media item (`POST /upload`, preview images).
    pub async fn create(
        &self,
        uploader: &UserId,
        content_type: Option<String>,
        filename: Option<String>,
        source_url: Option<String>,
        staged: StagedFile,
    ) -> Result<(OwnedMxcUri, String)> {
        Self::check_upload_fields(&content_type, &filename)?;
        let media_id = random_string(MEDIA_ID_LEN);
        let record = self.record(uploader, &staged, content_type, filename, source_url);
        let core = Arc::clone(&self.core);
        let id = media_id.clone();
        blocking(move || {
            let mut batch = WriteBatch::new();
            core.media.put(&mut batch, &id, &record)?;
            core.commit_with_file(staged, media_ref(&id), batch)
        })
        .await?;
        Ok((self.mxc(&media_id), media_id))
    }

    /// Reserve a media ID for a later upload (`POST /media/v1/create`); returns it with the
    /// time it expires unused. A user may hold only so many unused IDs at once.
    pub fn create_pending(&self, uploader: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let now = self.clock.now_ms();
        let mut live = 0u32;
        for row in self.core.pending_by_user.scan_prefix(&uploader.to_owned(), Direction::Forward)? {
            let (_, expires_ms) = row?;
            if expires_ms > now {
                live += 1;
            }
        }
        if live >= self.settings.max_pending {
            return Err(Error::limit_exceeded(
                "Too many pending media uploads; upload to or let some expire first",
            ));
        }
        let media_id = random_string(MEDIA_ID_LEN);
        let expires_ms = now.saturating_add(self.settings.unused_expiration_ms);
        let mut batch = WriteBatch::new();
        let record = PendingMediaRecord { uploader: uploader.to_owned(), created_ms: now, expires_ms };
        self.core.pending.put(&mut batch, &media_id, &record)?;
        self.core.pending_by_user.put(&mut batch, &(uploader.to_owned(), media_id.clone()), &expires_ms)?;
        self.core.store.write(batch)?;
        Ok((self.mxc(&media_id), expires_ms))
    }

    /// Check that `uploader` may upload to a reserved ID now, and hold it for them while the
    /// content streams: unknown or expired IDs are `M_NOT_FOUND`, another user's
    /// `M_FORBIDDEN`, IDs with content (or an upload running) `M_CANNOT_OVERWRITE_MEDIA`.
    pub fn reserve_upload(
        &self,
        uploader: &UserId,
        server_name: &ServerName,
        media_id: &str,
    ) -> Result<UploadReservation<'_>> {
        let media_id = self.local_id(server_name, media_id)?;
        if self.core.media.contains(&media_id.to_owned())? {
            return Err(Error::cannot_overwrite_media());
        }
        let pending = self.core.pending.get(&media_id.to_owned())?.ok_or_else(not_found)?;
        if pending.expires_ms <= self.clock.now_ms() {
            return Err(Error::not_found("This media ID has expired"));
        }
        if pending.uploader != uploader {
            return Err(Error::forbidden("This media ID was created by another user"));
        }
        let mut uploading = self.uploading.lock().unwrap_or_else(PoisonError::into_inner);
        if !uploading.insert(media_id.to_owned()) {
            return Err(Error::cannot_overwrite_media());
        }
        Ok(UploadReservation { media: self, media_id: media_id.to_owned() })
    }

    /// Store the content of a reserved ID (`PUT /upload/{serverName}/{mediaId}`).
    pub async fn complete_upload(
        &self,
        reservation: UploadReservation<'_>,
        content_type: Option<String>,
        filename: Option<String>,
        staged: StagedFile,
    ) -> Result<()> {
        Self::check_upload_fields(&content_type, &filename)?;
        let media_id = reservation.media_id.clone();
        let now = self.clock.now_ms();
        let core = Arc::clone(&self.core);
        if core.media.contains(&media_id)? {
            return Err(Error::cannot_overwrite_media());
        }
        let pending = core.pending.get(&media_id)?.ok_or_else(not_found)?;
        if pending.expires_ms <= now {
            return Err(Error::not_found("This media ID expired during the upload"));
        }
        let record = self.record(&pending.uploader, &staged, content_type, filename, None);
        blocking(move || {
            let mut batch = WriteBatch::new();
            core.media.put(&mut batch, &media_id, &record)?;
            core.pending.delete(&mut batch, &media_id);
            core.pending_by_user.delete(&mut batch, &(pending.uploader.clone(), media_id.clone()));
            core.commit_with_file(staged, media_ref(&media_id), batch)
        })
        .await?;
        drop(reservation);
        self.uploaded.notify_waiters();
        Ok(())
    }

    /// A local media item's record, waiting up to `timeout` for the content of a reserved
    /// ID (then `M_NOT_YET_UPLOADED`).
    async fn wait_for_record(&self, media_id: &str, timeout: Duration) -> Result<MediaRecord> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_DOWNLOAD_WAIT);
        let key = media_id.to_owned();
        loop {
            // Subscribed before looking, so an upload finishing in between is not missed.
            let notified = self.uploaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(record) = self.core.media.get(&key)? {
                return Ok(record);
            }
            match self.core.pending.get(&key)? {
                Some(p) if p.expires_ms > self.clock.now_ms() => {}
                _ => return Err(not_found()),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::not_yet_uploaded());
            }
        }
    }

    async fn visible_record(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: Access,
    ) -> Result<Found> {
        if server_name != self.settings.server_name {
            // Fetched remote media (`RemoteMedia` fetches it first).
            let record = self.remote_record(server_name, media_id)?.ok_or_else(not_found)?;
            if record.quarantined_by.is_some() {
                return Err(not_found());
            }
            return Ok(Found {
                sha256: record.sha256,
                size: record.size,
                content_type: record.content_type,
                filename: record.filename,
                thumbnails_key: remote_key(server_name, media_id),
            });
        }
        let media_id = self.local_id(server_name, media_id)?;
        let record = self.wait_for_record(media_id, timeout).await?;
        // Frozen media does not exist as far as the legacy endpoints are concerned.
        if access == Access::Legacy && record.frozen {
            return Err(not_found());
        }
        // Quarantined media is gone for everyone, its thumbnails too.
        if record.quarantined_by.is_some() {
            return Err(not_found());
        }
        Ok(Found {
            sha256: record.sha256,
            size: record.size,
            content_type: record.content_type,
            filename: record.filename,
            thumbnails_key: media_id.to_owned(),
        })
    }

    /// Another server's media item, if it was fetched.
    pub fn remote_record(
        &self,
        server_name: &ServerName,
        media_id: &str,
    ) -> Result<Option<RemoteMediaRecord>> {
        if !is_valid_media_id(media_id) {
            return Err(not_found());
        }
        Ok(self.core.remote.get(&(server_name.to_string(), media_id.to_owned()))?)
    }

    /// Keep another server's media item, fetched into `staged`. A second fetch of the same
    /// item (two requests racing) keeps the first.
    pub async fn store_remote(
        &self,
        server_name: &ServerName,
        media_id: &str,
        staged: StagedFile,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        if server_name == self.settings.server_name || !is_valid_media_id(media_id) {
            return Err(Error::invalid_param("Not another server's media ID"));
        }
        Self::check_upload_fields(&content_type, &filename)?;
        let key = (server_name.to_string(), media_id.to_owned());
        let record = RemoteMediaRecord {
            sha256: staged.hash,
            size: staged.size,
            content_type,
            filename,
            fetched_ms: self.clock.now_ms(),
            quarantined_by: None,
        };
        let core = Arc::clone(&self.core);
        blocking(move || {
            if core.remote.contains(&key)? {
                return Ok(());
            }
            let mut batch = WriteBatch::new();
            core.remote.put(&mut batch, &key, &record)?;
            let reference = format!("remote:{}/{}", key.0, key.1);
            core.commit_with_file(staged, reference, batch)
        })
        .await
    }

    async fn open(&self, hash: &ContentHash) -> Result<ContentBody> {
        match self.core.files.read(hash).await {
            Ok(Some(body)) => Ok(body),
            // Purged between reading the record and opening the file.
            Ok(None) => Err(not_found()),
            Err(e) => Err(Error::internal(format!("opening media file: {e}"))),
        }
    }

    /// A media item's content, streamed from its file.
    pub async fn content(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: Access,
    ) -> Result<Content> {
        let record = self.visible_record(server_name, media_id, timeout, access).await?;
        let body = self.open(&record.sha256).await?;
        Ok(Content {
            body,
            size: record.size,
            content_type: record.content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename: record.filename,
        })
    }

    /// Stored content as a file on disk for decoding: the content file itself, or, with a
    /// bucket, a temporary download deleted when the last clone is dropped. From a bucket,
    /// content that is not an image this server reads (sniffed from a ranged read) or too
    /// large to be one worth decoding is refused before it is downloaded, so thumbnail
    /// requests for a large video cannot make the server fetch it again and again.
    async fn local_copy(
        &self,
        hash: ContentHash,
        size: u64,
    ) -> Result<std::result::Result<Arc<LocalCopy>, ThumbnailError>> {
        let core = Arc::clone(&self.core);
        let max_file = thumbnail::max_image_file_size(self.settings.max_image_pixels);
        blocking(move || {
            if core.files.is_remote() {
                match core.files.head(&hash, thumbnail::SNIFF_LEN) {
                    Ok(Some(head)) if !thumbnail::is_image(&head) => {
                        return Ok(Err(ThumbnailError::Unsupported));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(not_found()),
                    Err(e) => return Err(Error::internal(format!("fetching media: {e}"))),
                }
                if size > max_file {
                    return Ok(Err(ThumbnailError::TooLarge));
                }
            }
            match core.files.local_copy(&hash) {
                Ok(copy) => Ok(Ok(Arc::new(copy))),
                // Purged between reading the record and fetching the object.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found()),
                Err(e) => Err(Error::internal(format!("fetching media: {e}"))),
            }
        })
        .await
    }

    /// Probe a stored image under the thumbnailing bound.
    async fn probe(&self, copy: Arc<LocalCopy>) -> Result<std::result::Result<ImageInfo, ThumbnailError>> {
        let _permit = self.thumbnailers.acquire().await.map_err(|e| Error::internal(e.to_string()))?;
        let max_pixels = self.settings.max_image_pixels;
        blocking(move || Ok(thumbnail::probe(copy.path(), max_pixels))).await
    }

    /// Dimensions and format of a stored image, for link previews; `None` if it is not an
    /// image this server reads.
    pub async fn image_info(&self, media_id: &str) -> Result<Option<ImageInfo>> {
        let Some(record) = self.core.media.get(&media_id.to_owned())? else { return Ok(None) };
        let Ok(copy) = self.local_copy(record.sha256, record.size).await? else { return Ok(None) };
        Ok(self.probe(copy).await?.ok())
    }

    /// A thumbnail of a media item: a stored one for the recommended sizes (made on first
    /// request), one made for this request for other sizes, or the original itself when it
    /// is no larger than asked or is an animation the client asked for.
    pub async fn thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
        timeout: Duration,
        access: Access,
    ) -> Result<Content> {
        if request.width == 0 || request.height == 0 {
            return Err(Error::unknown("Thumbnail width and height must be positive"));
        }
        let record = self.visible_record(server_name, media_id, timeout, access).await?;
        let (target, stored) = thumbnail_box(request.width, request.height, request.method);
        if !stored {
            return self.make_thumbnail(&record, request, target, None).await;
        }
        let key = (
            record.thumbnails_key.clone(),
            u64::from(target.width),
            u64::from(target.height),
            target.method.as_str().to_owned(),
        );
        if let Some(thumb) = self.core.thumbnails.get(&key)? {
            return self.stored_thumbnail(&thumb).await;
        }
        // An image posted to a busy room is asked for by every member's client at once: one
        // request makes the thumbnail, the others wait for it and then read it.
        let _making = self.making.lock(&key).await;
        if let Some(thumb) = self.core.thumbnails.get(&key)? {
            return self.stored_thumbnail(&thumb).await;
        }
        self.make_thumbnail(&record, request, target, Some(key)).await
    }

    async fn stored_thumbnail(&self, thumb: &ThumbnailRecord) -> Result<Content> {
        let body = self.open(&thumb.sha256).await?;
        Ok(thumbnail_content(body, thumb.size, &thumb.content_type))
    }

    /// Serve the original where it will do, or decode it and make the thumbnail, storing it
    /// under `key` when there is one.
    async fn make_thumbnail(
        &self,
        record: &Found,
        request: ThumbnailRequest,
        target: ThumbnailBox,
        key: Option<ThumbnailKey>,
    ) -> Result<Content> {
        let copy = self.local_copy(record.sha256, record.size).await?.map_err(thumbnail_error)?;
        let info = self.probe(Arc::clone(&copy)).await?.map_err(thumbnail_error)?;
        let serve_original = if info.animated {
            request.animated == Some(true) && record.size <= MAX_ANIMATED_ORIGINAL
        } else {
            original_fits(info.width, info.height, target)
        };
        if serve_original {
            let body = self.open(&record.sha256).await?;
            return Ok(thumbnail_content(body, record.size, info.format.content_type()));
        }

        let made = {
            let _permit = self.thumbnailers.acquire().await.map_err(|e| Error::internal(e.to_string()))?;
            let max_pixels = self.settings.max_image_pixels;
            blocking(move || Ok(thumbnail::make(copy.path(), info, target, max_pixels))).await?
        }
        .map_err(thumbnail_error)?;
        self.thumbnails_made.fetch_add(1, Ordering::Relaxed);
        let Some(key) = key else {
            let size = made.bytes.len() as u64;
            return Ok(thumbnail_content(
                ContentBody::Bytes(Bytes::from(made.bytes)),
                size,
                made.content_type,
            ));
        };
        let core = Arc::clone(&self.core);
        let reference = thumbnail_ref(&key);
        let (content_type, size) = (made.content_type, made.bytes.len() as u64);
        let thumb = blocking(move || {
            let staged = core.files.stage_bytes(&made.bytes).map_err(io_error("writing a thumbnail"))?;
            let thumb = ThumbnailRecord {
                sha256: staged.hash,
                size,
                content_type: content_type.to_owned(),
                width: made.width,
                height: made.height,
            };
            let mut batch = WriteBatch::new();
            core.thumbnails.put(&mut batch, &key, &thumb)?;
            match core.commit_with_file_for(staged, reference, batch, Some(&key.0))? {
                true => Ok(thumb),
                false => Err(not_found()),
            }
        })
        .await?;
        self.stored_thumbnail(&thumb).await
    }

    /// How many thumbnails were decoded and made since start (stored ones served again do
    /// not count).
    pub fn thumbnails_made(&self) -> u64 {
        self.thumbnails_made.load(Ordering::Relaxed)
    }

    /// Delete local media created before `cutoff_ms` (milliseconds since the epoch), with
    /// its thumbnails and the files nothing else uses.
    pub async fn purge_created_before(&self, cutoff_ms: u64) -> Result<PurgeReport> {
        let core = Arc::clone(&self.core);
        blocking(move || {
            let mut old = Vec::new();
            for row in core.media.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
                let (id, record) = row?;
                if record.created_ms < cutoff_ms {
                    old.push(id);
                }
            }
            let mut report = PurgeReport::default();
            for chunk in old.chunks(PURGE_BATCH) {
                let done = core.delete_media(chunk)?;
                report.media += done.media;
                report.bytes_freed += done.bytes_freed;
            }
            Ok(report)
        })
        .await
    }

    /// Delete local media uploaded more than `age` ago (the operator's `purge-media`).
    pub async fn purge_older_than(&self, age: Duration) -> Result<PurgeReport> {
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        self.purge_created_before(self.clock.now_ms().saturating_sub(age_ms)).await
    }

    /// Apply the retention setting, if there is one.
    pub async fn apply_retention(&self) -> Result<PurgeReport> {
        match self.settings.retention_ms {
            Some(age) => self.purge_created_before(self.clock.now_ms().saturating_sub(age)).await,
            None => Ok(PurgeReport::default()),
        }
    }

    /// Every local media item passing `keep`, by media ID (for admins: listing a user's
    /// uploads, statistics, sweeps). There is no index by uploader, so this reads the whole
    /// table; admin calls are rare.
    pub fn records_where(
        &self,
        keep: impl Fn(&str, &MediaRecord) -> bool,
    ) -> Result<Vec<(String, MediaRecord)>> {
        let mut found = Vec::new();
        for row in self.core.media.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            if keep(id.as_str(), &record) {
                found.push((id, record));
            }
        }
        Ok(found)
    }

    /// A local media item's record by its `mxc://` parts (for admins: any state).
    pub fn record_of(&self, server_name: &ServerName, media_id: &str) -> Result<MediaRecord> {
        let media_id = self.local_id(server_name, media_id)?;
        self.core.media.get(&media_id.to_owned())?.ok_or_else(not_found)
    }

    /// The media ID of a local `mxc://` URI, if it is one.
    pub fn local_media_id<'a>(&self, mxc: &'a str) -> Option<&'a str> {
        let rest = mxc.strip_prefix("mxc://")?;
        let (server, id) = rest.split_once('/')?;
        (server == self.settings.server_name.as_str() && is_valid_media_id(id)).then_some(id)
    }

    /// Quarantine (`by` set) or release (`by` None) media items; with `spare_protected`,
    /// protected items are left alone. Returns how many changed.
    pub fn set_quarantine(&self, ids: &[String], by: Option<&UserId>, spare_protected: bool) -> Result<u64> {
        let _guard = self.core.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = WriteBatch::new();
        let mut changed = 0;
        for id in ids {
            let Some(mut record) = self.core.media.get(id)? else { continue };
            if spare_protected && record.protected && by.is_some() {
                continue;
            }
            if record.quarantined_by.as_deref() == by {
                continue;
            }
            record.quarantined_by = by.map(ToOwned::to_owned);
            self.core.media.put(&mut batch, id, &record)?;
            changed += 1;
        }
        self.core.store.write(batch)?;
        Ok(changed)
    }

    /// Protect a media item from quarantine by room or user and from bulk deletion, or lift
    /// that; `M_NOT_FOUND` for unknown local media.
    pub fn set_protected(&self, media_id: &str, protected: bool) -> Result<()> {
        let _guard = self.core.file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let key = media_id.to_owned();
        let mut record = self.core.media.get(&key)?.ok_or_else(not_found)?;
        if record.protected != protected {
            record.protected = protected;
            self.core.media.insert(&key, &record)?;
        }
        Ok(())
    }

    /// Delete media items (their thumbnails, and files nothing else uses); answers the IDs
    /// that existed and are gone.
    pub async fn delete_ids(&self, ids: Vec<String>) -> Result<Vec<String>> {
        let core = Arc::clone(&self.core);
        blocking(move || {
            let mut deleted = Vec::new();
            for chunk in ids.chunks(PURGE_BATCH) {
                for id in chunk {
                    if core.media.contains(id)? {
                        deleted.push(id.clone());
                    }
                }
                core.delete_media(chunk)?;
            }
            Ok(deleted)
        })
        .await
    }

    /// `purge_media_cache`: forget other servers' media fetched before `cutoff_ms`, with
    /// its thumbnails and the files nothing else uses (a later request fetches it again).
    pub async fn purge_remote_fetched_before(&self, cutoff_ms: u64) -> Result<PurgeReport> {
        let core = Arc::clone(&self.core);
        blocking(move || {
            let mut old = Vec::new();
            for row in core.remote.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
                let (key, record) = row?;
                if record.fetched_ms < cutoff_ms {
                    old.push(key);
                }
            }
            let mut report = PurgeReport::default();
            for chunk in old.chunks(PURGE_BATCH) {
                let done = core.delete_remote(chunk)?;
                report.media += done.media;
                report.bytes_freed += done.bytes_freed;
            }
            Ok(report)
        })
        .await
    }

    /// Forget reserved IDs whose time ran out; returns how many.
    pub fn sweep_expired_pending(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut batch = WriteBatch::new();
        let mut swept = 0;
        for row in self.core.pending.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            if record.expires_ms <= now {
                self.core.pending.delete(&mut batch, &id);
                self.core.pending_by_user.delete(&mut batch, &(record.uploader, id));
                swept += 1;
            }
        }
        if swept > 0 {
            self.core.store.write(batch)?;
        }
        Ok(swept)
    }
}

fn thumbnail_content(body: ContentBody, size: u64, content_type: &str) -> Content {
    let extension = match content_type {
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "png",
    };
    Content {
        body,
        size,
        content_type: content_type.to_owned(),
        filename: Some(format!("thumbnail.{extension}")),
    }
}

/// A reserved ID held for one running upload; released when dropped, whether the upload
/// completed or failed half-way (the client may then try again).
pub struct UploadReservation<'a> {
    media: &'a Media,
    media_id: String,
}

impl Drop for UploadReservation<'_> {
    fn drop(&mut self) {
        self.media.uploading.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.media_id);
    }
}
