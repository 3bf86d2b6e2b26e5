//! The conformance suite every `KvStore` backend must pass. Backends call `run` from their
//! own tests with a fresh store opened on `TABLES`.

use std::ops::Bound;

use super::{
    kv::{Direction, KeyRange, KvStore, WriteBatch},
    tables::TableInfo,
};

/// The tables the suite uses; a backend under test opens these.
pub const TABLES: &[TableInfo] = &[
    TableInfo { name: "conf_a", key_layout: "bytes", value_type: "bytes", value_version: 1 },
    TableInfo { name: "conf_b", key_layout: "bytes", value_type: "bytes", value_version: 1 },
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

    store.flush().unwrap();
}
