//! The audit log: an append-only record of security-relevant actions (logins, password and
//! device changes, deactivations, admin API calls, room moderation, configuration reloads),
//! each naming its actor, client address, user agent and request ID.
//!
//! A record is written in the same batch as the action it records ([`Audit::stage`]), so
//! neither exists without the other. Records form a hash chain: each carries the SHA-256 of
//! its own canonical JSON (`hash`), which covers the `hash` of the record before it
//! (`prev_hash`); altering, removing or reordering a stored record breaks every later link,
//! which [`Audit::verify`] reports. The chain's head is held under one lock from staging
//! until the batch commits, so records take their places in commit order; audited actions are
//! rare enough (logins, admin calls) that the lock is never contended for long.
//!
//! Copies go, as JSON lines, to a file and to the local syslog when configured; admins read
//! the log at `GET /_conduit/admin/v1/audit_log`. Retention deletes the oldest records; the
//! first record left keeps its `prev_hash`, so verification starts from it.

use std::{
    io::Write as _,
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};
use sha2::{Digest, Sha256};

use super::{
    clock::Clock,
    context::{Actor, RequestContext},
};
use crate::{
    Error, Result,
    config::AuditConfig,
    storage::{
        Direction, KvStore, WriteBatch, codec::KeyCodec, kv::KeyRange, table::Table, tables::AUDIT_LOG,
    },
};

/// The `prev_hash` of the first record ever written.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Parameter names whose values are never recorded, wherever they appear.
const SECRET_KEYS: &[&str] = &[
    "password",
    "new_password",
    "access_token",
    "refresh_token",
    "token",
    "session",
    "auth",
    "secret",
    // An application service registration's tokens (the admin API takes registrations).
    "as_token",
    "hs_token",
];

/// Whether the action did what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// What to record: the action (a dotted name such as `login` or `admin.user.deactivate`),
/// its outcome, what it was done to, and its parameters (secrets are masked on the way in).
#[derive(Clone, Debug)]
pub struct Entry {
    pub action: String,
    pub outcome: Outcome,
    pub target: Option<String>,
    pub params: JsonValue,
}

impl Entry {
    pub fn success(action: impl Into<String>) -> Self {
        Self { action: action.into(), outcome: Outcome::Success, target: None, params: JsonValue::Null }
    }

    pub fn failure(action: impl Into<String>) -> Self {
        Self { outcome: Outcome::Failure, ..Self::success(action) }
    }

    pub fn target(mut self, target: impl ToString) -> Self {
        self.target = Some(target.to_string());
        self
    }

    pub fn params(mut self, params: JsonValue) -> Self {
        self.params = params;
        self
    }
}

/// Who acted, as a record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordActor {
    /// `user`, `appservice`, `anonymous`, `operator` (the command line) or `server`.
    pub kind: String,
    /// The application service that acted (as `user_id`, one of its users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appservice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One record as stored and served. Field order is the canonical order the hash covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: u64,
    pub action: String,
    pub outcome: Outcome,
    pub actor: RecordActor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "JsonValue::is_null", default)]
    pub params: JsonValue,
    pub prev_hash: String,
    /// The SHA-256 (hex) of this record's canonical JSON with `hash` empty.
    pub hash: String,
}

impl Record {
    /// The hash this record should carry: over its canonical JSON with `hash` left empty.
    /// serde_json writes struct fields in declaration order and map keys sorted, so the bytes
    /// are the same whoever computes them.
    pub fn compute_hash(&self) -> String {
        let unsealed = Record { hash: String::new(), ..self.clone() };
        let bytes = serde_json::to_vec(&unsealed).unwrap_or_default();
        hex(&Sha256::digest(&bytes))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A query over the log: filters, and where to continue.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub actor: Option<String>,
    pub target: Option<String>,
    /// An action name, or a prefix ending in `.` (`admin.` matches every admin call).
    pub action: Option<String>,
    pub from_ts: Option<u64>,
    pub to_ts: Option<u64>,
    /// Continue from this token (a `next_batch` answered before).
    pub from: Option<u64>,
    pub limit: usize,
    /// Oldest first instead of newest first.
    pub forwards: bool,
}

/// The most records one query answers.
pub const MAX_QUERY_LIMIT: usize = 1000;
/// The most records one query reads while filtering, so a filter matching nothing in a large
/// log answers (with a `next_batch` to continue) instead of reading it all.
const MAX_QUERY_SCAN: usize = 100_000;

/// What [`Audit::verify`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The first record whose hash or link does not hold, if any.
    pub broken_at: Option<u64>,
}

/// The head of the chain: the next record's sequence number and `prev_hash`.
struct Head {
    next_seq: u64,
    last_hash: String,
}

pub struct Audit {
    table: Table<u64, String>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    config: AuditConfig,
    head: Mutex<Head>,
}

/// A record staged in a batch, holding the chain's head until the batch is committed: call
/// [`Staged::committed`] after the commit succeeds. Dropped without it (the commit failed),
/// the head stays where it was and the next record takes the same place.
pub struct Staged<'a> {
    audit: &'a Audit,
    head: MutexGuard<'a, Head>,
    seq: u64,
    hash: String,
    line: String,
}

impl Staged<'_> {
    /// The batch holding the record was committed: advance the chain and copy the record to
    /// the configured sinks.
    pub fn committed(mut self) {
        self.head.next_seq = self.seq + 1;
        self.head.last_hash = std::mem::take(&mut self.hash);
        self.audit.copy_out(&self.line);
    }
}

impl Audit {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, config: AuditConfig) -> Result<Self> {
        let table = AUDIT_LOG.open(store);
        let last = table.scan(KeyRange::all(), Direction::Reverse)?.next().transpose()?;
        let head = match last {
            Some((seq, json)) => {
                let record: Record = serde_json::from_str(&json)
                    .map_err(|e| Error::internal(format!("audit record {seq} unreadable: {e}")))?;
                Head { next_seq: seq + 1, last_hash: record.hash }
            }
            None => Head { next_seq: 0, last_hash: GENESIS_HASH.to_owned() },
        };
        Ok(Self { table, store: Arc::clone(store), clock, config, head: Mutex::new(head) })
    }

    /// Put a record of `entry`, done in `context`, into `batch`. Keep the returned [`Staged`]
    /// until the batch is committed and then call its `committed`; take every other lock the
    /// action needs before this one.
    pub fn stage(
        &self,
        batch: &mut WriteBatch,
        context: &RequestContext,
        entry: Entry,
    ) -> Result<Staged<'_>> {
        let head = self.head.lock().map_err(|_| Error::internal("audit chain lock poisoned"))?;
        let mut record = Record {
            seq: head.next_seq,
            ts: self.clock.now_ms(),
            action: entry.action,
            outcome: entry.outcome,
            actor: record_actor(context),
            target: entry.target,
            params: masked(entry.params),
            prev_hash: head.last_hash.clone(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        let line =
            serde_json::to_string(&record).map_err(|e| Error::internal(format!("audit record: {e}")))?;
        self.table.put(batch, &record.seq, &line)?;
        Ok(Staged { audit: self, head, seq: record.seq, hash: record.hash, line })
    }

    /// Record `entry` on its own (for actions whose own writes are elsewhere or none, such
    /// as a refused login).
    pub fn record(&self, context: &RequestContext, entry: Entry) -> Result<()> {
        let mut batch = WriteBatch::new();
        let staged = self.stage(&mut batch, context, entry)?;
        self.store.write(batch)?;
        staged.committed();
        Ok(())
    }

    /// As [`Audit::record`], logging a failure instead of returning it: for call sites where
    /// the action has already happened and must not be reported as failed.
    pub fn record_or_log(&self, context: &RequestContext, entry: Entry) {
        let action = entry.action.clone();
        if let Err(e) = self.record(context, entry) {
            tracing::error!(error = %e, action, "writing an audit record failed");
        }
    }

    fn copy_out(&self, line: &str) {
        if let Some(path) = &self.config.file {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = written {
                tracing::error!(error = %e, path = %path.display(), "appending to the audit file failed");
            }
        }
        if self.config.syslog {
            send_to_syslog(line);
        }
    }

    /// Records matching `query`, and the token to continue from when there may be more.
    pub fn query(&self, query: &Query) -> Result<(Vec<Record>, Option<u64>)> {
        let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
        let range = match (query.from, query.forwards) {
            (Some(from), true) => KeyRange::all().after(from.to_key_bytes()),
            (Some(from), false) => KeyRange::all().before(from.to_key_bytes()),
            (None, _) => KeyRange::all(),
        };
        let mut found = Vec::new();
        let mut scanned = 0;
        for row in
            self.table.scan(range, if query.forwards { Direction::Forward } else { Direction::Reverse })?
        {
            let (seq, json) = row?;
            scanned += 1;
            let record: Record = serde_json::from_str(&json)
                .map_err(|e| Error::internal(format!("audit record {seq} unreadable: {e}")))?;
            if matches(&record, query) {
                found.push(record);
                if found.len() == limit {
                    return Ok((found, Some(seq)));
                }
            }
            if scanned >= MAX_QUERY_SCAN {
                return Ok((found, Some(seq)));
            }
        }
        Ok((found, None))
    }

    /// Walk the whole chain, checking every record's hash and link.
    pub fn verify(&self) -> Result<Verification> {
        let mut report = Verification { records: 0, first_seq: None, last_seq: None, broken_at: None };
        let mut prev: Option<(u64, String)> = None;
        for row in self.table.scan(KeyRange::all(), Direction::Forward)? {
            let (seq, json) = row?;
            report.records += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            if report.broken_at.is_some() {
                continue;
            }
            let Ok(record) = serde_json::from_str::<Record>(&json) else {
                report.broken_at = Some(seq);
                continue;
            };
            let linked = match &prev {
                // The oldest record left after retention may follow deleted ones.
                None => seq == 0 && record.prev_hash == GENESIS_HASH || seq > 0,
                Some((prev_seq, prev_hash)) => seq == prev_seq + 1 && &record.prev_hash == prev_hash,
            };
            if !linked || record.seq != seq || record.compute_hash() != record.hash {
                report.broken_at = Some(seq);
            }
            prev = Some((seq, record.hash));
        }
        Ok(report)
    }

    /// Delete records older than the configured retention; the number deleted.
    pub fn prune(&self) -> Result<u64> {
        let Some(days) = self.config.retention_days else { return Ok(0) };
        let cutoff = self.clock.now_ms().saturating_sub(u64::from(days) * 86_400_000);
        let mut batch = WriteBatch::new();
        let mut deleted = 0;
        // Never the newest record: it anchors the chain's head.
        let newest = self.head.lock().map_err(|_| Error::internal("audit chain lock poisoned"))?.next_seq;
        for row in self.table.scan(KeyRange::all(), Direction::Forward)? {
            let (seq, json) = row?;
            let ts = serde_json::from_str::<Record>(&json).map(|r| r.ts).unwrap_or(0);
            if ts >= cutoff || seq + 1 >= newest {
                break;
            }
            self.table.delete(&mut batch, &seq);
            deleted += 1;
        }
        if deleted > 0 {
            self.store.write(batch)?;
        }
        Ok(deleted)
    }
}

fn matches(record: &Record, query: &Query) -> bool {
    let actor_ok = query.actor.as_deref().is_none_or(|actor| {
        record.actor.user_id.as_deref() == Some(actor)
            || record.actor.ip.as_deref() == Some(actor)
            || record.actor.kind == actor
    });
    let action_ok = query.action.as_deref().is_none_or(|action| {
        record.action == action || (action.ends_with('.') && record.action.starts_with(action))
    });
    actor_ok
        && action_ok
        && query.target.as_deref().is_none_or(|target| record.target.as_deref() == Some(target))
        && query.from_ts.is_none_or(|from| record.ts >= from)
        && query.to_ts.is_none_or(|to| record.ts <= to)
}

fn record_actor(context: &RequestContext) -> RecordActor {
    let mut appservice = None;
    let (kind, user_id, device_id) = match &context.actor {
        Actor::Anonymous => ("anonymous", None, None),
        Actor::User { user_id, device_id } => {
            ("user", Some(user_id.to_string()), device_id.as_ref().map(ToString::to_string))
        }
        Actor::Appservice { id, user_id, device_id } => {
            appservice = Some(id.clone());
            ("appservice", Some(user_id.to_string()), device_id.as_ref().map(ToString::to_string))
        }
        Actor::RemoteServer { server_name } => ("remote_server", Some(server_name.to_string()), None),
        Actor::Operator => ("operator", None, None),
        Actor::Server => ("server", None, None),
    };
    let nonempty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    RecordActor {
        kind: kind.to_owned(),
        appservice,
        user_id,
        device_id,
        ip: nonempty(&context.client_ip),
        user_agent: context.user_agent.clone(),
        request_id: nonempty(&context.request_id),
    }
}

/// `params` with the value of every secret-named key replaced, at any depth.
fn masked(params: JsonValue) -> JsonValue {
    match params {
        JsonValue::Object(map) => JsonValue::Object(
            map.into_iter()
                .map(|(key, value)| {
                    if SECRET_KEYS.contains(&key.as_str()) {
                        (key, JsonValue::String("<redacted>".to_owned()))
                    } else {
                        (key, masked(value))
                    }
                })
                .collect::<Map<_, _>>(),
        ),
        JsonValue::Array(items) => JsonValue::Array(items.into_iter().map(masked).collect()),
        other => other,
    }
}

/// One datagram to the local syslog socket, facility authpriv (10), severity notice (5).
fn send_to_syslog(line: &str) {
    #[cfg(unix)]
    {
        let message = format!("<{}>conduit-audit: {line}", 10 * 8 + 5);
        let sent = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|socket| socket.send_to(message.as_bytes(), "/dev/log"));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sending an audit record to syslog failed");
        }
    }
    #[cfg(not(unix))]
    let _ = line;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        service::clock::ManualClock,
        storage::{memory::MemoryStore, tables::ALL_TABLES},
    };

    fn log() -> (Audit, Arc<dyn KvStore>) {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let audit = Audit::new(&store, Arc::new(ManualClock::new()), AuditConfig::default()).unwrap();
        (audit, store)
    }

    fn operator() -> RequestContext {
        RequestContext::internal(Actor::Operator, "test")
    }

    #[test]
    fn tampering_with_any_stored_record_is_found() {
        let (audit, store) = log();
        for n in 0..5 {
            audit.record(&operator(), Entry::success("user.create").target(format!("@u{n}:x"))).unwrap();
        }
        assert_eq!(audit.verify().unwrap().broken_at, None);
        let table = AUDIT_LOG.open(&store);

        // An edited field: the record's own hash no longer matches.
        let original = table.get(&2).unwrap().unwrap();
        table.insert(&2, &original.replace("@u2:x", "@someone-else:x")).unwrap();
        assert_eq!(audit.verify().unwrap().broken_at, Some(2));

        // Re-sealed with a fresh hash: the next record's link no longer matches.
        let mut forged: Record = serde_json::from_str(&table.get(&2).unwrap().unwrap()).unwrap();
        forged.hash = forged.compute_hash();
        table.insert(&2, &serde_json::to_string(&forged).unwrap()).unwrap();
        assert_eq!(audit.verify().unwrap().broken_at, Some(3));

        // A deleted record in the middle breaks the sequence.
        table.insert(&2, &original).unwrap();
        assert_eq!(audit.verify().unwrap().broken_at, None);
        table.remove(&3).unwrap();
        assert_eq!(audit.verify().unwrap().broken_at, Some(4));
    }

    #[test]
    fn a_staged_record_dropped_before_commit_leaves_the_chain_as_it_was() {
        let (audit, store) = log();
        audit.record(&operator(), Entry::success("first")).unwrap();
        {
            let mut batch = WriteBatch::new();
            let _abandoned = audit.stage(&mut batch, &operator(), Entry::success("never committed")).unwrap();
        }
        audit.record(&operator(), Entry::success("second")).unwrap();
        let report = audit.verify().unwrap();
        assert_eq!((report.records, report.broken_at), (2, None));
        let second: Record = serde_json::from_str(&AUDIT_LOG.open(&store).get(&1).unwrap().unwrap()).unwrap();
        assert_eq!(second.action, "second");
    }

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let params = serde_json::json!({
            "password": "hunter2",
            "user": "@a:x",
            "nested": [{"new_password": "p", "keep": 1}],
        });
        assert_eq!(
            masked(params),
            serde_json::json!({
                "password": "<redacted>",
                "user": "@a:x",
                "nested": [{"new_password": "<redacted>", "keep": 1}],
            })
        );
    }

    #[test]
    fn a_changed_field_changes_the_hash() {
        let mut record = Record {
            seq: 3,
            ts: 1,
            action: "login".into(),
            outcome: Outcome::Success,
            actor: RecordActor {
                appservice: None,
                kind: "user".into(),
                user_id: Some("@a:x".into()),
                device_id: None,
                ip: None,
                user_agent: None,
                request_id: None,
            },
            target: None,
            params: JsonValue::Null,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        let sealed = record.hash.clone();
        assert_eq!(record.compute_hash(), sealed, "the hash ignores its own field");
        record.outcome = Outcome::Failure;
        assert_ne!(record.compute_hash(), sealed);
    }
}
