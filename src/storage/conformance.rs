//! The conformance suite every `KvStore` backend must pass. Backends call `run` from their
//! own tests with a fresh store opened on `TABLES`.

use std::ops::Bound;

use std::sync::{
    Arc, Barrier,
    atomic::{AtomicU64, Ordering},
};

use super::{
    kv::{Direction, Durability, KeyRange, KvStore, SEQUENCES_TABLE, StorageError, WriteBatch, transaction},
    tables::TableInfo,
};

/// The tables the suite uses; a backend under test opens these.
pub const TABLES: &[TableInfo] = &[
    TableInfo { name: "conf_a", key_layout: "bytes", value_type: "bytes", value_version: 1 },
    TableInfo { name: "conf_b", key_layout: "bytes", value_type: "bytes", value_version: 1 },
    TableInfo { name: SEQUENCES_TABLE, key_layout: "name", value_type: "u64", value_version: 1 },
];

fn keys(store: &dyn KvStore, range: KeyRange, dir: Direction) -> Vec<Vec<u8>> {
    store.scan("conf_a", range, dir).unwrap().map(|r| r.unwrap().0).collect()
}

/// Exercise every promise of the trait. Panics (as tests do) on the first broken one.
pub fn run(store: &dyn KvStore) {
    // Empty reads.
    assert_eq!(store.get("conf_a", b"missing").unwrap(), None);
    assert_eq!(keys(store, KeyRange::all(), Direction::Forward), Vec::<Vec<u8>>::new());

    // A batch across two tables lands whole.
    let mut batch = WriteBatch::new();
    for k in [&b"b"[..], b"a", b"c", b"ab", b"\xff", b"\x00"] {
        batch.put("conf_a", k.to_vec(), [b"v-", k].concat());
    }
    batch.put("conf_b", b"a".to_vec(), b"other".to_vec());
    store.write(batch).unwrap();
    assert_eq!(store.get("conf_a", b"a").unwrap(), Some(b"v-a".to_vec()));
    assert_eq!(store.get("conf_b", b"a").unwrap(), Some(b"other".to_vec()), "tables are separate");

    // Multi-get keeps order and reports misses.
    let got = store.get_many("conf_a", &[b"c".to_vec(), b"zz".to_vec(), b"a".to_vec()]).unwrap();
    assert_eq!(got, vec![Some(b"v-c".to_vec()), None, Some(b"v-a".to_vec())]);

    // Ordered scans both ways, with every bound kind.
    let all: Vec<Vec<u8>> = [&b"\x00"[..], b"a", b"ab", b"b", b"c", b"\xff"].map(|k| k.to_vec()).into();
    assert_eq!(keys(store, KeyRange::all(), Direction::Forward), all);
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(keys(store, KeyRange::all(), Direction::Reverse), rev);
    assert_eq!(
        keys(store, KeyRange::prefix(b"a".to_vec()), Direction::Forward),
        vec![b"a".to_vec(), b"ab".to_vec()]
    );
    assert_eq!(
        keys(store, KeyRange::prefix(b"a".to_vec()), Direction::Reverse),
        vec![b"ab".to_vec(), b"a".to_vec()]
    );
    let r = KeyRange { start: Bound::Excluded(b"a".to_vec()), end: Bound::Included(b"c".to_vec()) };
    assert_eq!(
        keys(store, r.clone(), Direction::Forward),
        vec![b"ab".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(keys(store, r, Direction::Reverse), vec![b"c".to_vec(), b"b".to_vec(), b"ab".to_vec()]);
    let r = KeyRange { start: Bound::Included(b"b".to_vec()), end: Bound::Excluded(b"c".to_vec()) };
    assert_eq!(keys(store, r, Direction::Forward), vec![b"b".to_vec()]);
    assert_eq!(keys(store, KeyRange::prefix(vec![0xff]), Direction::Forward), vec![vec![0xff]]);

    // Deletes and overwrites inside one batch apply in order.
    let mut batch = WriteBatch::new();
    batch.delete("conf_a", b"b".to_vec());
    batch.put("conf_a", b"c".to_vec(), b"first".to_vec());
    batch.put("conf_a", b"c".to_vec(), b"second".to_vec());
    store.write(batch).unwrap();
    assert_eq!(store.get("conf_a", b"b").unwrap(), None);
    assert_eq!(store.get("conf_a", b"c").unwrap(), Some(b"second".to_vec()));

    // A batch naming an unknown table fails and applies nothing.
    let mut batch = WriteBatch::new();
    batch.put("conf_a", b"new".to_vec(), b"x".to_vec());
    batch.put("no_such_table", b"k".to_vec(), b"x".to_vec());
    assert!(store.write(batch).is_err());
    assert_eq!(store.get("conf_a", b"new").unwrap(), None, "a failed batch must apply nothing");
    assert!(store.get("no_such_table", b"k").is_err());

    // Empty values and empty keys are legal.
    let mut batch = WriteBatch::new();
    batch.put("conf_b", Vec::new(), Vec::new());
    store.write(batch).unwrap();
    assert_eq!(store.get("conf_b", b"").unwrap(), Some(Vec::new()));

    // A buffered write is visible at once, atomically, and a failed one applies nothing.
    let mut batch = WriteBatch::new();
    batch.put("conf_a", b"buffered".to_vec(), b"1".to_vec());
    batch.put("conf_b", b"buffered".to_vec(), b"2".to_vec());
    store.write_buffered(batch).unwrap();
    assert_eq!(store.get("conf_a", b"buffered").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("conf_b", b"buffered").unwrap(), Some(b"2".to_vec()));
    let mut batch = WriteBatch::new();
    batch.put("conf_a", b"buffered2".to_vec(), b"x".to_vec());
    batch.put("no_such_table", b"k".to_vec(), b"x".to_vec());
    assert!(store.write_buffered(batch).is_err());
    assert_eq!(store.get("conf_a", b"buffered2").unwrap(), None);
    store.sync().unwrap();

    // A transaction reads its own writes, an abort writes nothing, and an error aborts.
    let got = transaction::<_, StorageError>(store, Durability::Synced, |tx| {
        tx.put("conf_a", b"tx".to_vec(), b"1".to_vec());
        tx.delete("conf_a", b"a".to_vec());
        let own = tx.get("conf_a", b"tx")?;
        let deleted = tx.get("conf_a", b"a")?;
        let scanned = tx.scan("conf_a", KeyRange::prefix(b"a".to_vec()), Direction::Forward)?;
        Ok(((own, deleted, scanned), true))
    })
    .unwrap();
    assert_eq!(got, (Some(b"1".to_vec()), None, vec![(b"ab".to_vec(), b"v-ab".to_vec())]));
    assert_eq!(store.get("conf_a", b"tx").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("conf_a", b"a").unwrap(), None);
    transaction::<_, StorageError>(store, Durability::Synced, |tx| {
        tx.put("conf_a", b"aborted".to_vec(), b"1".to_vec());
        Ok(((), false))
    })
    .unwrap();
    assert_eq!(store.get("conf_a", b"aborted").unwrap(), None);
    let failed = transaction::<(), StorageError>(store, Durability::Synced, |tx| {
        tx.put("conf_a", b"failed".to_vec(), b"1".to_vec());
        Err(StorageError::Backend("the body gave up".into()))
    });
    assert!(failed.is_err());
    assert_eq!(store.get("conf_a", b"failed").unwrap(), None);
    // A transaction writing to an unknown table fails and applies nothing.
    let bad = transaction::<_, StorageError>(store, Durability::Synced, |tx| {
        tx.put("conf_a", b"half".to_vec(), b"1".to_vec());
        tx.put("no_such_table", b"k".to_vec(), b"1".to_vec());
        Ok(((), true))
    });
    assert!(bad.is_err());
    assert_eq!(store.get("conf_a", b"half").unwrap(), None);
    // Reverse scans inside a transaction.
    let rev = transaction::<_, StorageError>(store, Durability::Buffered, |tx| {
        Ok((tx.scan("conf_a", KeyRange::prefix(b"buffered".to_vec()), Direction::Reverse)?, false))
    })
    .unwrap();
    assert_eq!(rev.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![b"buffered".to_vec()]);

    // Sequences start at 1 and hand out consecutive blocks.
    assert_eq!(store.next_ids("single", 3).unwrap(), 1..4);
    assert_eq!(store.next_ids("single", 1).unwrap(), 4..5);
    assert_eq!(store.next_ids("other", 2).unwrap(), 1..3);

    store.flush().unwrap();
}

/// Threads per concurrent check, and rounds per thread.
const THREADS: usize = 8;
const ROUNDS: u64 = 200;

fn counter(bytes: Option<Vec<u8>>) -> u64 {
    bytes.map_or(0, |b| u64::from_be_bytes(b.try_into().expect("an 8-byte counter")))
}

/// Run `work(thread)` on `THREADS` threads started together.
fn together(store: &Arc<dyn KvStore>, work: impl Fn(&dyn KvStore, usize) + Send + Sync + 'static) {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, work, start) = (Arc::clone(store), Arc::clone(&work), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                work(store.as_ref(), t);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker thread panicked");
    }
}

/// The promises of transactions and sequences under concurrency: every backend must pass
/// this with a fresh store on `TABLES` (a PostgreSQL backend included). Panics on the first
/// broken promise.
pub fn run_concurrent(store: Arc<dyn KvStore>) {
    // Read-modify-write increments in transactions lose no update, even with blind writes to
    // other keys of the same table going on.
    together(&store, |store, t| {
        for i in 0..ROUNDS {
            transaction::<_, StorageError>(store, Durability::Buffered, |tx| {
                let n = counter(tx.get("conf_a", b"counter")?);
                tx.put("conf_a", b"counter".to_vec(), (n + 1).to_be_bytes().to_vec());
                Ok(((), true))
            })
            .unwrap();
            let mut blind = WriteBatch::new();
            blind.put("conf_a", format!("blind-{t}-{i}").into_bytes(), Vec::new());
            store.write_buffered(blind).unwrap();
        }
    });
    assert_eq!(counter(store.get("conf_a", b"counter").unwrap()), THREADS as u64 * ROUNDS, "lost updates");

    // Compare-and-set: a value only moves forward. Each thread proposes its own values; a
    // transaction writes only if its value is higher than the stored one, and the stored
    // value never goes down (the rule receipts follow).
    together(&store, move |store, t| {
        for i in 0..ROUNDS {
            let proposal = i * THREADS as u64 + t as u64 + 1;
            transaction::<_, StorageError>(store, Durability::Buffered, |tx| {
                let current = counter(tx.get("conf_b", b"high")?);
                if current >= proposal {
                    return Ok(((), false));
                }
                tx.put("conf_b", b"high".to_vec(), proposal.to_be_bytes().to_vec());
                Ok(((), true))
            })
            .unwrap();
            let now = counter(store.get("conf_b", b"high").unwrap());
            assert!(now >= proposal, "the value went back below a proposal: {now} < {proposal}");
        }
    });
    assert_eq!(counter(store.get("conf_b", b"high").unwrap()), ROUNDS * THREADS as u64);

    // Take once: every token is handed out to exactly one taker.
    let mut batch = WriteBatch::new();
    for k in 0..ROUNDS {
        batch.put("conf_b", format!("token-{k:05}").into_bytes(), k.to_be_bytes().to_vec());
    }
    store.write(batch).unwrap();
    let taken: Arc<Vec<AtomicU64>> = Arc::new((0..ROUNDS).map(|_| AtomicU64::new(0)).collect());
    let tally = Arc::clone(&taken);
    together(&store, move |store, _| {
        for k in 0..ROUNDS {
            let key = format!("token-{k:05}").into_bytes();
            let got = transaction::<_, StorageError>(store, Durability::Synced, |tx| {
                let value = tx.get("conf_b", &key)?;
                if value.is_some() {
                    tx.delete("conf_b", key.clone());
                }
                let found = value.is_some();
                Ok((value, found))
            })
            .unwrap();
            if let Some(value) = got {
                assert_eq!(counter(Some(value)), k);
                tally[k as usize].fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    for (k, n) in taken.iter().enumerate() {
        assert_eq!(n.load(Ordering::SeqCst), 1, "token {k} taken {} times", n.load(Ordering::SeqCst));
    }

    // A transaction that scanned a range conflicts with a write into that range: counting
    // rows and adding one more under a cap never passes the cap.
    together(&store, |store, t| {
        for i in 0..ROUNDS / 4 {
            transaction::<_, StorageError>(store, Durability::Buffered, |tx| {
                let rows = tx.scan("conf_a", KeyRange::prefix(b"capped-".to_vec()), Direction::Forward)?;
                if rows.len() >= 50 {
                    return Ok(((), false));
                }
                tx.put("conf_a", format!("capped-{t}-{i}").into_bytes(), Vec::new());
                Ok(((), true))
            })
            .unwrap();
        }
    });
    let capped =
        store.scan("conf_a", KeyRange::prefix(b"capped-".to_vec()), Direction::Forward).unwrap().count();
    assert_eq!(capped, 50, "the cap held exactly");

    // Sequences: every value handed out once, blocks of mixed sizes interleaved.
    let ids: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let collected = Arc::clone(&ids);
    together(&store, move |store, t| {
        let mut mine = Vec::new();
        for _ in 0..ROUNDS / 4 {
            let n = (t as u64 % 3) + 1;
            let range = store.next_ids("conformance", n).unwrap();
            assert_eq!(range.end - range.start, n);
            mine.extend(range);
        }
        collected.lock().unwrap().extend(mine);
    });
    let mut ids = ids.lock().unwrap().clone();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "a sequence value was handed out twice");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&(total as u64)), "a sequence without holes when nothing is lost");
    // Raising a sequence skips past the floor, and never lowers it.
    store.raise_sequence("conformance", 10_000).unwrap();
    assert_eq!(store.next_ids("conformance", 1).unwrap().start, 10_001);
    store.raise_sequence("conformance", 5).unwrap();
    assert_eq!(store.next_ids("conformance", 1).unwrap().start, 10_002);
}
