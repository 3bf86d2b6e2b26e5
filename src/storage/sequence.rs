//! IDs from a durable sequence, taken in blocks: one synced transaction per block instead of
//! one per ID. IDs are unique across restarts and processes; a block's unused rest is lost at
//! a restart, so IDs are increasing within one process but not dense.

use std::{ops::Range, sync::Arc};

use super::kv::{KvStore, StorageResult};

pub struct Sequence {
    store: Arc<dyn KvStore>,
    name: &'static str,
    block: u64,
    /// The IDs of the current block not handed out yet.
    left: std::sync::Mutex<Range<u64>>,
}

impl Sequence {
    /// The sequence `name` of `store`, taken `block` IDs at a time (1 for IDs made rarely).
    pub fn new(store: &Arc<dyn KvStore>, name: &'static str, block: u64) -> Self {
        Self { store: Arc::clone(store), name, block: block.max(1), left: std::sync::Mutex::new(0..0) }
    }

    /// The next ID.
    pub fn next(&self) -> StorageResult<u64> {
        let mut left = self.left.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if left.is_empty() {
            *left = self.store.next_ids(self.name, self.block)?;
        }
        let id = left.start;
        left.start += 1;
        Ok(id)
    }
}
