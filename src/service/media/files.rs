//! Media bytes on the filesystem. Content is addressed by its SHA-256: a file lives at
//! `content/ab/cd/<64 hex digits>` under the media directory (two levels of 256 directories
//! keep every directory small), so equal content is stored once. New content is written to
//! `tmp/` while it is hashed, then renamed into place: a reader never sees a partial file,
//! and a crash leaves only temporary files, which are cleared at start.
//!
//! This module knows files only; which media use which file is `Media`'s business, and it
//! serialises placing and deleting files with its reference rows.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use bytes::BytesMut;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

use crate::storage::tables::ContentHash;

/// Bytes gathered before each write: large writes keep the per-write cost (a hop to a
/// blocking thread) small against hashing and copying, and bound what an upload holds in
/// memory.
const WRITE_CHUNK: usize = 1024 * 1024;

/// The media directory.
pub struct FileStore {
    content: PathBuf,
    tmp: PathBuf,
}

impl FileStore {
    /// Open (creating) the media directory under `root`, removing temporary files a previous
    /// run left behind.
    pub fn open(root: &Path) -> io::Result<Self> {
        let content = root.join("content");
        let tmp = root.join("tmp");
        fs::create_dir_all(&content)?;
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(Self { content, tmp })
    }

    /// Where the content with `hash` lives (whether or not it exists).
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.content.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// A new, empty temporary file.
    pub fn temp_file(&self) -> io::Result<(File, TempPath)> {
        loop {
            let path = self.tmp.join(format!("{}.part", crate::service::passwords::random_string(16)));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, TempPath(Some(path)))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Write `bytes` (a thumbnail) to a staged file.
    pub fn stage_bytes(&self, bytes: &[u8]) -> io::Result<StagedFile> {
        let (mut file, path) = self.temp_file()?;
        file.write_all(bytes)?;
        file.sync_data()?;
        Ok(StagedFile { path, hash: ContentHash(Sha256::digest(bytes).into()), size: bytes.len() as u64 })
    }

    /// Move a staged file to its content path, unless that content is already stored (then
    /// the staged copy is dropped). Returns whether a new file was placed. The caller holds
    /// the lock that orders this against deletions of the same content.
    pub fn place(&self, staged: StagedFile) -> io::Result<bool> {
        let target = self.path(&staged.hash);
        if target.exists() {
            return Ok(false);
        }
        let dir = target.parent().ok_or_else(|| io::Error::other("content path has no parent"))?;
        fs::create_dir_all(dir)?;
        let mut temp = staged.path;
        let from = temp.0.take().ok_or_else(|| io::Error::other("staged file already used"))?;
        if let Err(e) = fs::rename(&from, &target) {
            temp.0 = Some(from);
            return Err(e);
        }
        // The rename itself must survive a crash, as the record that will point at it does.
        File::open(dir)?.sync_all()?;
        Ok(true)
    }

    /// Copy every content file into the media directory `dest` (laid out as this one, so a
    /// server whose media directory is `dest` serves them). Each file is hard-linked when
    /// `dest` is on the same filesystem (content files are never changed once placed) and
    /// copied otherwise. Returns the number of files and their bytes.
    pub fn copy_all_to(&self, dest: &Path) -> io::Result<(u64, u64)> {
        let mut totals = (0, 0);
        fs::create_dir_all(dest.join("tmp"))?;
        copy_tree(&self.content, &dest.join("content"), &mut totals)?;
        Ok(totals)
    }

    /// Delete a content file; one already gone is not an error.
    pub fn remove(&self, hash: &ContentHash) -> io::Result<()> {
        match fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Recursively link or copy the files under `from` into `to`.
fn copy_tree(from: &Path, to: &Path, totals: &mut (u64, u64)) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, totals)?;
        } else if kind.is_file() {
            let size = entry.metadata()?.len();
            if fs::hard_link(entry.path(), &target).is_err() {
                fs::copy(entry.path(), &target)?;
            }
            totals.0 += 1;
            totals.1 += size;
        }
    }
    Ok(())
}

/// A temporary file's path, deleted on drop unless it was moved into place.
pub struct TempPath(Option<PathBuf>);

impl TempPath {
    /// The file's path, while it is still temporary.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Content written and hashed, waiting in `tmp/` to be placed.
pub struct StagedFile {
    path: TempPath,
    pub hash: ContentHash,
    pub size: u64,
}

impl StagedFile {
    /// The temporary file, for reading before it is placed (probing an image).
    pub fn temp_path(&self) -> Option<&Path> {
        self.path.0.as_deref()
    }
}

/// Why a streamed write stopped.
#[derive(Debug)]
pub enum SinkError {
    /// More bytes arrived than the limit allows.
    TooLarge,
    Io(io::Error),
}

/// Receives content piece by piece (an upload's body, a fetched image), hashing and writing
/// it to a temporary file as it comes. The file and the hasher move to a blocking thread for
/// each chunk, so the runtime never waits on disk, and one chunk is hashed and written while
/// the next arrives: at most two chunks are held in memory.
pub struct UploadSink {
    /// The file and hasher, when no write is running.
    state: Option<(File, Sha256)>,
    /// The write running now; it hands the file and hasher back.
    writing: Option<JoinHandle<io::Result<(File, Sha256)>>>,
    path: TempPath,
    buffer: BytesMut,
    size: u64,
    limit: u64,
}

fn join_error(e: tokio::task::JoinError) -> SinkError {
    SinkError::Io(io::Error::other(e))
}

impl UploadSink {
    pub fn new(file: File, path: TempPath, limit: u64) -> Self {
        let state = Some((file, Sha256::new()));
        Self { state, writing: None, path, buffer: BytesMut::new(), size: 0, limit }
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Take the next piece; refuses once the total passes the limit.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(SinkError::TooLarge);
        }
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Wait for the running write, if any, and take the file and hasher back.
    async fn settle(&mut self) -> Result<(File, Sha256), SinkError> {
        if let Some(writing) = self.writing.take() {
            return writing.await.map_err(join_error)?.map_err(SinkError::Io);
        }
        self.state.take().ok_or_else(|| SinkError::Io(io::Error::other("sink failed earlier")))
    }

    /// Start writing the buffered bytes, once the previous chunk is written.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        let (mut file, mut hasher) = self.settle().await?;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            file.write_all(&chunk).map(|()| (file, hasher))
        }));
        Ok(())
    }

    /// Write what is buffered, make it durable and hand over the staged file.
    pub async fn finish(mut self) -> Result<StagedFile, SinkError> {
        self.flush().await?;
        let (file, hasher) = self.settle().await?;
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(join_error)?
            .map_err(SinkError::Io)?;
        let path = TempPath(self.path.0.take());
        Ok(StagedFile { path, hash: ContentHash(hasher.finalize().into()), size: self.size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_is_stored_once_and_temp_files_never_linger() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let (file, path) = store.temp_file().unwrap();
        let mut sink = UploadSink::new(file, path, 10 * 1024 * 1024);
        let data = vec![7u8; 3 * 1024 * 1024 + 5];
        for piece in data.chunks(100_000) {
            sink.write(piece).await.unwrap();
        }
        let staged = sink.finish().await.unwrap();
        assert_eq!(staged.hash.0, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(staged.size, data.len() as u64);
        let hash = staged.hash;
        assert!(store.place(staged).unwrap());
        let stored = store.path(&hash);
        assert_eq!(fs::read(&stored).unwrap(), data);
        assert!(stored.starts_with(dir.path().join("content").join(&hash.to_hex()[..2])));

        // The same content again: not placed twice, and its temp file is gone.
        let again = store.stage_bytes(&data).unwrap();
        assert!(!store.place(again).unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        store.remove(&hash).unwrap();
        store.remove(&hash).unwrap();
        assert!(!stored.exists());
    }

    #[tokio::test]
    async fn an_oversized_or_abandoned_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let (file, path) = store.temp_file().unwrap();
        let mut sink = UploadSink::new(file, path, 1000);
        sink.write(&[1; 600]).await.unwrap();
        assert!(matches!(sink.write(&[1; 600]).await, Err(SinkError::TooLarge)));
        drop(sink);
        let (file, path) = store.temp_file().unwrap();
        let mut sink = UploadSink::new(file, path, u64::MAX);
        sink.write(&[1; WRITE_CHUNK + 1]).await.unwrap();
        drop(sink);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // Leftovers of a crash are cleared when the store opens.
        fs::write(dir.path().join("tmp").join("x.part"), b"junk").unwrap();
        FileStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
