//! Where content bytes are kept, behind one interface: files under the media directory
//! (`files::FileStore`, the default) or objects in an S3-compatible bucket
//! (`s3::S3Store`). Both address content by its SHA-256, so the tables above do not know
//! which one holds it.
//!
//! Uploads always arrive in the media directory's `tmp/` first, hashed as they are written;
//! the filesystem renames the finished file into place, S3 sends it in one `PUT` and the
//! temporary file is then removed. Code that needs a file on disk (image decoding) asks for
//! a local copy: the content file itself, or a temporary download of the object.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{
    ContentBody,
    files::{FileStore, StagedFile, TempPath},
    s3::S3Store,
};
use crate::{
    config::{Config, MediaBackend},
    storage::tables::ContentHash,
};

/// The content store: the media directory, and the bucket when media lives in S3.
pub struct ContentStore {
    files: FileStore,
    s3: Option<S3Store>,
}

/// A content file on disk for reading: the stored file itself, or a temporary copy that is
/// deleted when this is dropped.
pub struct LocalCopy {
    path: PathBuf,
    _temp: Option<TempPath>,
}

impl LocalCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ContentStore {
    /// Open the configured store: the media directory always (uploads are spooled there),
    /// and for `media_backend = "s3"` the bucket, which must answer.
    pub fn open(config: &Config) -> Result<Self, String> {
        let dir = config.media_dir();
        let files = FileStore::open(&dir)
            .map_err(|e| format!("cannot open media directory {}: {e}", dir.display()))?;
        let s3 = match config.media_backend {
            MediaBackend::Filesystem => None,
            MediaBackend::S3 => Some(S3Store::connect(&config.media_s3)?),
        };
        Ok(Self { files, s3 })
    }

    /// Whether content lives in a bucket rather than in the media directory.
    pub fn is_remote(&self) -> bool {
        self.s3.is_some()
    }

    /// Up to the first `len` bytes of content (blocking); `None` when it is not stored.
    pub fn head(&self, hash: &ContentHash, len: usize) -> io::Result<Option<Vec<u8>>> {
        if let Some(s3) = &self.s3 {
            return s3.read_head(hash, len);
        }
        use std::io::Read as _;
        let file = match std::fs::File::open(self.files.path(hash)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut head)?;
        Ok(Some(head))
    }

    /// A new, empty temporary file in the media directory.
    pub fn temp_file(&self) -> io::Result<(std::fs::File, TempPath)> {
        self.files.temp_file()
    }

    /// Write `bytes` (a thumbnail) to a staged file.
    pub fn stage_bytes(&self, bytes: &[u8]) -> io::Result<StagedFile> {
        self.files.stage_bytes(bytes)
    }

    /// Send staged content to the bucket before the caller takes the lock that orders
    /// placing and deleting, so that lock is not held for a whole upload. Returns whether
    /// this sent it (it was not there). Nothing to do on the filesystem.
    pub fn upload_ahead(&self, staged: &StagedFile) -> io::Result<bool> {
        let Some(s3) = &self.s3 else { return Ok(false) };
        if s3.exists(&staged.hash)? {
            return Ok(false);
        }
        let path = staged.temp_path().ok_or_else(|| io::Error::other("staged file already used"))?;
        s3.put_file(path, &staged.hash, staged.size)?;
        Ok(true)
    }

    /// Make staged content stored, unless it already is. Returns whether this placed it
    /// (on S3: sent it, here or in `upload_ahead`). The caller holds the lock that orders
    /// this against deletions of the same content.
    pub fn place(&self, staged: StagedFile, uploaded_ahead: bool) -> io::Result<bool> {
        let Some(s3) = &self.s3 else { return self.files.place(staged) };
        // A deletion of the same content may have run between `upload_ahead` and the lock.
        if s3.exists(&staged.hash)? {
            return Ok(uploaded_ahead);
        }
        let path = staged.temp_path().ok_or_else(|| io::Error::other("staged file already used"))?;
        s3.put_file(path, &staged.hash, staged.size)?;
        Ok(true)
    }

    /// Delete content; content already gone is not an error.
    pub fn remove(&self, hash: &ContentHash) -> io::Result<()> {
        match &self.s3 {
            Some(s3) => s3.delete(hash),
            None => self.files.remove(hash),
        }
    }

    /// Open content for streaming from its start; `None` when it is not stored.
    pub async fn read(&self, hash: &ContentHash) -> io::Result<Option<ContentBody>> {
        match &self.s3 {
            Some(s3) => Ok(s3.open(hash).await?.map(|reader| ContentBody::Reader(Box::new(reader)))),
            None => match tokio::fs::File::open(self.files.path(hash)).await {
                Ok(file) => Ok(Some(ContentBody::File(file))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The content as a file on disk, for decoding (blocking).
    pub fn local_copy(&self, hash: &ContentHash) -> io::Result<LocalCopy> {
        let Some(s3) = &self.s3 else {
            return Ok(LocalCopy { path: self.files.path(hash), _temp: None });
        };
        let (file, temp) = self.files.temp_file()?;
        if !s3.download_to(hash, file)? {
            return Err(io::Error::new(io::ErrorKind::NotFound, "media object is missing from the bucket"));
        }
        let path = temp.path().ok_or_else(|| io::Error::other("temporary file already used"))?.to_owned();
        Ok(LocalCopy { path, _temp: Some(temp) })
    }

    /// Copy every content file into the media directory `dest` (see
    /// `FileStore::copy_all_to`). Content in a bucket is not copied (it is backed up with the
    /// object store's own tools): `(0, 0)`.
    pub fn copy_all_to(&self, dest: &Path) -> io::Result<(u64, u64)> {
        match &self.s3 {
            Some(_) => Ok((0, 0)),
            None => self.files.copy_all_to(dest),
        }
    }
}
