//! `Backups`: a consistent copy of the running server's data (the database as of one instant
//! plus every media file its rows name) in a directory that a server started with
//! `database_path` set to it serves as it is. No tables of its own.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::media::Media;
use crate::{Error, Result, storage::KvStore};

/// What a backup wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub media_files: u64,
    pub media_bytes: u64,
}

pub struct Backups {
    store: Arc<dyn KvStore>,
    media: Arc<Media>,
}

impl Backups {
    pub fn new(store: &Arc<dyn KvStore>, media: Arc<Media>) -> Self {
        Self { store: Arc::clone(store), media }
    }

    /// Write a backup into `dir`, which must be an absolute path that does not exist or is an
    /// empty directory. The database copy holds every write that returned before the call
    /// (every acknowledged event); media go to `dir/media`, where a server with `media_path`
    /// unset looks for them. Blocks for as long as the copy takes: call it from a blocking
    /// thread.
    pub fn create(&self, dir: &Path) -> Result<BackupReport> {
        if !dir.is_absolute() {
            return Err(Error::invalid_param(format!(
                "the backup directory {} is not absolute",
                dir.display()
            )));
        }
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::invalid_param(format!(
                        "{} exists and is not empty; back up into a new or empty directory",
                        dir.display()
                    )));
                }
                // The checkpoint creates its directory itself.
                fs::remove_dir(dir).map_err(|e| io_error(dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(Error::invalid_param(format!("{} exists and is not a directory", dir.display())));
            }
            Err(e) => return Err(io_error(dir, e)),
        }
        let (media_files, media_bytes) =
            self.media.copy_files_with_snapshot(&dir.join("media"), || Ok(self.store.checkpoint(dir)?))?;
        Ok(BackupReport { dir: dir.to_owned(), media_files, media_bytes })
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("backup: {}: {e}", path.display()))
}
