//! Sync filters saved by clients (`POST /user/{userId}/filter`), by user and filter ID.
//! Owns the `filters` table.

use std::sync::Arc;

use rand::{Rng, distributions::Alphanumeric};
use ruma::{OwnedUserId, UserId, api::client::filter::FilterDefinition};

use crate::{
    Error, Result,
    matrix::limits::{self, MAX_FILTER_ID_BYTES},
    storage::{KvStore, Table, tables::FILTERS},
};

/// Length of generated filter IDs.
const FILTER_ID_LEN: usize = 10;

pub struct Filters {
    filters: Table<(OwnedUserId, String), Box<serde_json::value::RawValue>>,
}

impl Filters {
    pub fn new(store: &Arc<dyn KvStore>) -> Self {
        Self { filters: FILTERS.open(store) }
    }

    /// Save a filter and return its new ID.
    pub fn create(&self, user_id: &UserId, filter: &FilterDefinition) -> Result<String> {
        let json = serde_json::value::to_raw_value(filter)
            .map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?;
        let id: String =
            rand::thread_rng().sample_iter(&Alphanumeric).take(FILTER_ID_LEN).map(char::from).collect();
        self.filters.insert(&(user_id.to_owned(), id.clone()), &json)?;
        Ok(id)
    }

    /// A saved filter of the user.
    pub fn get(&self, user_id: &UserId, filter_id: &str) -> Result<Option<FilterDefinition>> {
        limits::check_len(filter_id, MAX_FILTER_ID_BYTES, "The filter ID").map_err(Error::invalid_param)?;
        let Some(json) = self.filters.get(&(user_id.to_owned(), filter_id.to_owned()))? else {
            return Ok(None);
        };
        serde_json::from_str(json.get()).map(Some).map_err(|e| Error::internal(format!("stored filter: {e}")))
    }
}
