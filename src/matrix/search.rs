//! Full-text search rules as pure functions: which text of which event is searchable (spec:
//! "Server Side Search"), how text becomes terms, how a match is ranked, and how filter
//! type patterns and user-directory queries match. No I/O; the index lives in
//! `service::rooms::search`.

use std::collections::BTreeMap;

use serde_json::Value as JsonValue;

/// Terms longer than this are cut to it, in the index and in queries alike, so that one long
/// run of letters (a pasted hash) cannot make a huge key and still matches itself.
pub const MAX_TERM_CHARS: usize = 64;
/// An event contributes at most this many distinct terms: it bounds the index rows one
/// event can cost (a 64 KiB message of one-letter words would otherwise write thousands).
pub const MAX_TERMS_PER_EVENT: usize = 1024;

/// The searchable keys the spec names, as `keys` in a search request spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SearchKey {
    /// `content.body` of `m.room.message`.
    Body,
    /// `content.name` of `m.room.name`.
    Name,
    /// `content.topic` of `m.room.topic`.
    Topic,
}

impl SearchKey {
    pub const ALL: [SearchKey; 3] = [SearchKey::Body, SearchKey::Name, SearchKey::Topic];

    /// The key as a search request names it.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchKey::Body => "content.body",
            SearchKey::Name => "content.name",
            SearchKey::Topic => "content.topic",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == key)
    }

    /// The key searched in events of type `kind`, if that type is searched at all.
    pub fn of_event_type(kind: &str) -> Option<Self> {
        match kind {
            "m.room.message" => Some(SearchKey::Body),
            "m.room.name" => Some(SearchKey::Name),
            "m.room.topic" => Some(SearchKey::Topic),
            _ => None,
        }
    }
}

/// The searchable text of an event, and under which key, if its type is searched and the
/// field is a string. Messages must not be state events and names and topics must be the
/// room's (empty state key). Topics fall back to the `text/plain` body in `m.topic` when
/// `topic` is empty (the spec says `topic` should duplicate it, so both would count words
/// twice).
pub fn searchable_text(
    kind: &str,
    state_key: Option<&str>,
    content: &JsonValue,
) -> Option<(SearchKey, String)> {
    let key = SearchKey::of_event_type(kind)?;
    let expected_state_key = if key == SearchKey::Body { None } else { Some("") };
    if state_key != expected_state_key {
        return None;
    }
    let field = |name: &str| content.get(name).and_then(JsonValue::as_str).filter(|s| !s.is_empty());
    let text = match key {
        SearchKey::Body => field("body"),
        SearchKey::Name => field("name"),
        SearchKey::Topic => field("topic").or_else(|| plain_topic(content)),
    }?;
    Some((key, text.to_owned()))
}

/// The `text/plain` representation in `m.topic.m.text` (a missing mimetype means plain).
fn plain_topic(content: &JsonValue) -> Option<&str> {
    content.get("m.topic")?.get("m.text")?.as_array()?.iter().find_map(|repr| {
        let mimetype = repr.get("mimetype").and_then(JsonValue::as_str).unwrap_or("text/plain");
        (mimetype == "text/plain").then(|| repr.get("body").and_then(JsonValue::as_str)).flatten()
    })
}

/// Split text into search terms: lower-cased runs of Unicode letters and digits, everything
/// else a separator, each cut to [`MAX_TERM_CHARS`]. Order and repeats are kept.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| word.chars().flat_map(char::to_lowercase).take(MAX_TERM_CHARS).collect())
        .collect()
}

/// What an event's text puts in the index: each distinct term with how often it occurs
/// (at most [`MAX_TERMS_PER_EVENT`] terms, the first ones to appear), and the total
/// number of words, which ranking uses to prefer short, focused texts.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexedText {
    pub terms: BTreeMap<String, u32>,
    pub length: u32,
}

pub fn index_text(text: &str) -> IndexedText {
    let words = tokenize(text);
    let mut terms: BTreeMap<String, u32> = BTreeMap::new();
    for word in &words {
        if let Some(count) = terms.get_mut(word) {
            *count = count.saturating_add(1);
        } else if terms.len() < MAX_TERMS_PER_EVENT {
            terms.insert(word.clone(), 1);
        }
    }
    IndexedText { terms, length: u32::try_from(words.len()).unwrap_or(u32::MAX) }
}

/// A parsed query: its distinct words in order; the last may match as a prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub words: Vec<QueryWord>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct QueryWord {
    pub word: String,
    /// Whether terms that merely start with `word` match too.
    pub prefix: bool,
}

/// Shorter last words match only exactly: a one- or two-letter prefix would read a large
/// share of a room's vocabulary for little use.
pub const MIN_PREFIX_CHARS: usize = 3;

impl Query {
    /// Parse a search term. Every word must match (AND); the last word, if it has at least
    /// [`MIN_PREFIX_CHARS`] characters, also matches longer terms it starts (as typed).
    pub fn parse(search_term: &str) -> Self {
        let tokens = tokenize(search_term);
        let last = tokens.last().cloned();
        let mut words: Vec<QueryWord> = Vec::new();
        for token in tokens {
            if !words.iter().any(|w| w.word == token) {
                words.push(QueryWord { word: token, prefix: false });
            }
        }
        if let Some(last) = last
            && last.chars().count() >= MIN_PREFIX_CHARS
            && let Some(word) = words.iter_mut().find(|w| w.word == last)
        {
            word.prefix = true;
        }
        Self { words }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// The rank of an event that matched every query word: the sum over the words of
/// `1 + ln(occurrences)` (repeats count, but less and less), divided by the square root of the
/// text's length in words plus one (a word in a short text says more). Depends only on the
/// event and the query, never on the rest of the index, so a result keeps its place between
/// the pages of one search.
pub fn rank(occurrences_per_word: &[u32], length: u32) -> f64 {
    let matched: f64 = occurrences_per_word.iter().map(|&n| 1.0 + f64::from(n.max(1)).ln()).sum();
    matched / (f64::from(length) + 1.0).sqrt()
}

/// How well a user matches a directory query: `None` unless every query word starts some
/// word of the user's localpart or display name; otherwise the number of query words that
/// equal a whole word, so exact names rank before mere prefixes.
pub fn directory_match(query: &[String], localpart: &str, display_name: Option<&str>) -> Option<usize> {
    let mut words = tokenize(localpart);
    words.extend(display_name.map(tokenize).unwrap_or_default());
    let mut exact = 0;
    for q in query {
        if words.iter().any(|w| w == q) {
            exact += 1;
        } else if !words.iter().any(|w| w.starts_with(q.as_str())) {
            return None;
        }
    }
    Some(exact)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text)
    }

    #[test]
    fn tokenize_lowercases_and_splits_on_anything_not_a_letter_or_digit() {
        let check = |text: &str, expected: &[&str]| assert_eq!(words(text), expected, "{text:?}");
        check("Hello, World!", &["hello", "world"]);
        check("  ", &[]);
        check("", &[]);
        check("e-mail: bob@example.com", &["e", "mail", "bob", "example", "com"]);
        check("Ünïcode ÉTÉ straße", &["ünïcode", "été", "straße"]);
        check("v2.0_rc1", &["v2", "0", "rc1"]);
        check("Привет мир", &["привет", "мир"]);
        check("a\u{0}b", &["a", "b"]);
        check("ΣΊΣΥΦΟΣ", &["σίσυφοσ"]);
    }

    #[test]
    fn long_terms_are_cut_the_same_way_everywhere() {
        let long = "x".repeat(200);
        assert_eq!(words(&long), vec!["x".repeat(MAX_TERM_CHARS)]);
        assert_eq!(Query::parse(&long).words[0].word, "x".repeat(MAX_TERM_CHARS));
    }

    #[test]
    fn index_text_counts_terms_and_length() {
        let indexed = index_text("the cat and the hat");
        assert_eq!(indexed.length, 5);
        assert_eq!(indexed.terms.get("the"), Some(&2));
        assert_eq!(indexed.terms.get("cat"), Some(&1));
        assert_eq!(indexed.terms.len(), 4);

        let many: String = (0..MAX_TERMS_PER_EVENT + 10).map(|i| format!("w{i} ")).collect();
        let indexed = index_text(&many);
        assert_eq!(indexed.terms.len(), MAX_TERMS_PER_EVENT);
        assert_eq!(indexed.length as usize, MAX_TERMS_PER_EVENT + 10);
    }

    #[test]
    fn query_words_are_distinct_and_only_a_long_last_word_is_a_prefix() {
        let q = Query::parse("Meeting notes meeting");
        assert_eq!(
            q.words,
            vec![
                QueryWord { word: "meeting".into(), prefix: true },
                QueryWord { word: "notes".into(), prefix: false },
            ]
        );
        let q = Query::parse("go to");
        assert!(q.words.iter().all(|w| !w.prefix), "{q:?}");
        assert!(Query::parse(" ?! ").is_empty());
    }

    #[test]
    fn searchable_text_per_type_and_key() {
        let check = |kind: &str, content: JsonValue, expected: Option<(SearchKey, &str)>| {
            let state_key = (kind != "m.room.message").then_some("");
            assert_eq!(
                searchable_text(kind, state_key, &content),
                expected.map(|(k, t)| (k, t.to_owned())),
                "{kind} {content}"
            );
        };
        check("m.room.message", json!({"msgtype": "m.text", "body": "hi"}), Some((SearchKey::Body, "hi")));
        check("m.room.message", json!({"body": 5}), None);
        check("m.room.message", json!({}), None);
        check("m.room.name", json!({"name": "Lobby"}), Some((SearchKey::Name, "Lobby")));
        check("m.room.topic", json!({"topic": "Plans"}), Some((SearchKey::Topic, "Plans")));
        check(
            "m.room.topic",
            json!({"topic": "", "m.topic": {"m.text": [
                {"mimetype": "text/html", "body": "<b>x</b>"}, {"body": "plain words"}
            ]}}),
            Some((SearchKey::Topic, "plain words")),
        );
        check("m.room.encrypted", json!({"body": "ciphertext"}), None);
        check("m.reaction", json!({"body": "x"}), None);
        // Only the room's name and plain messages count.
        assert_eq!(searchable_text("m.room.name", Some("x"), &json!({"name": "n"})), None);
        assert_eq!(searchable_text("m.room.name", None, &json!({"name": "n"})), None);
        assert_eq!(searchable_text("m.room.message", Some(""), &json!({"body": "b"})), None);
    }

    #[test]
    fn search_keys_round_trip() {
        for key in SearchKey::ALL {
            assert_eq!(SearchKey::parse(key.as_str()), Some(key));
        }
        assert_eq!(SearchKey::parse("content.other"), None);
    }

    #[test]
    fn rank_prefers_more_matches_and_shorter_texts() {
        assert!(rank(&[1], 1) > rank(&[1], 10));
        assert!(rank(&[3], 10) > rank(&[1], 10));
        assert!(rank(&[1, 1], 10) > rank(&[1], 10));
        // Deterministic: the same inputs give the same bits (pagination relies on it).
        assert_eq!(rank(&[2, 1], 7).to_bits(), rank(&[2, 1], 7).to_bits());
    }

    #[test]
    fn directory_matching_is_by_word_prefix_and_needs_every_word() {
        let q = |s: &str| tokenize(s);
        assert_eq!(directory_match(&q("ali"), "alice", None), Some(0));
        assert_eq!(directory_match(&q("alice"), "alice", None), Some(1));
        assert_eq!(directory_match(&q("SMI"), "bob", Some("Alice Smith")), Some(0));
        assert_eq!(directory_match(&q("alice smith"), "a1", Some("Alice Smith")), Some(2));
        assert_eq!(directory_match(&q("alice jones"), "a1", Some("Alice Smith")), None);
        assert_eq!(directory_match(&q("lice"), "alice", None), None, "word prefix, not substring");
        assert_eq!(directory_match(&q("sm"), "alice.smith", None), Some(0));
        assert_eq!(directory_match(&q(""), "alice", None), Some(0));
    }
}
