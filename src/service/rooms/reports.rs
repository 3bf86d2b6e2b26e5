//! Reports of events, rooms and users, kept for the server's admins. Owns the `reports` table.

use std::sync::Arc;

use crate::{
    Result,
    service::clock::Clock,
    storage::{
        Direction, KvStore, Table,
        kv::KeyRange,
        sequence::Sequence,
        tables::{REPORTS, ReportRecord},
    },
};

/// The store's sequence of report IDs.
pub const SEQUENCE: &str = "report";

pub struct Reports {
    reports: Table<u64, ReportRecord>,
    /// Report IDs, one at a time (reports are rare).
    ids: Sequence,
    clock: Arc<dyn Clock>,
}

impl Reports {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Result<Self> {
        Ok(Self { reports: REPORTS.open(store), ids: Sequence::new(store, SEQUENCE, 1), clock })
    }

    /// Store a report (the caller checked that its subject exists and is visible).
    pub fn file(&self, mut report: ReportRecord) -> Result<u64> {
        report.received_ms = self.clock.now_ms();
        let id = self.ids.next()?;
        self.reports.insert(&id, &report)?;
        tracing::info!(report_id = id, reporter = %report.reporter, "report received");
        Ok(id)
    }

    /// One report.
    pub fn get(&self, id: u64) -> Result<Option<ReportRecord>> {
        Ok(self.reports.get(&id)?)
    }

    /// Remove a report (an admin dealt with it); `false` if there was none.
    pub fn remove(&self, id: u64) -> Result<bool> {
        if !self.reports.contains(&id)? {
            return Ok(false);
        }
        self.reports.remove(&id)?;
        Ok(true)
    }

    /// Every report, oldest first (for admin tooling).
    pub fn all(&self) -> Result<Vec<(u64, ReportRecord)>> {
        self.reports.scan(KeyRange::all(), Direction::Forward)?.map(|row| Ok(row?)).collect()
    }
}
