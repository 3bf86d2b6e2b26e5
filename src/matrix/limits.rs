//! Size limits on what clients send: the ones the spec states (event types, state keys,
//! push keys...), the ones Synapse enforces and clients therefore respect (to-device content,
//! device IDs), and the few this server adds to keep one request from breaking reads for
//! others (JSON nesting depth). Each is a named constant with the check that applies it, so
//! the API and the services refuse the same things for the same reasons.

/// The deepest nesting of arrays and objects a request body may have (the top-level object
/// counts as 1).
///
/// Why 64: what a client stores comes back to it, and to others, wrapped in more JSON. A
/// to-device message's content sits 5 levels deep in a `/sync` response; a state event's
/// content sits about 9 deep, more as `unsigned.prev_content`, and an edit bundled inside a
/// thread's latest event inside a timeline adds another 6 or so. Everything that parses such
/// JSON with serde_json (this server re-reading stored content, matrix-rust-sdk reading a
/// `/sync` response) gives up at 128 levels; content nested 127 deep was accepted and then
/// failed every later read. 64 leaves room for every wrapping this server does, with margin
/// for wrappings to come, while real Matrix JSON (encrypted payloads, key signatures, push
/// rule conditions, key backup sessions) stays under 10 levels. Synapse's own bound is its
/// Python recursion limit (about 1000).
pub const MAX_JSON_DEPTH: usize = 64;

/// The longest event type and state key, in bytes (spec: "Size limits" of room events).
/// Account data and to-device types are event types too and are held to the same limit.
pub const MAX_EVENT_TYPE_BYTES: usize = 255;
/// The longest state key, in bytes (spec: "Size limits" of room events).
pub const MAX_STATE_KEY_BYTES: usize = 255;

/// The largest content of one to-device message, as sent, in bytes: Synapse's limit (the
/// size of a federation EDU), which clients already keep under; larger messages are refused
/// with 413.
pub const MAX_TO_DEVICE_CONTENT_BYTES: usize = 65_536;

/// The longest device ID a client may choose at login or registration, in bytes: Synapse's
/// limit at login. The spec sets none; device IDs end up in keys, tokens and every sync.
pub const MAX_DEVICE_ID_BYTES: usize = 512;

/// The longest transaction ID, in bytes. The spec sets none; clients use short counters or
/// UUIDs, and every one is stored.
pub const MAX_TXN_ID_BYTES: usize = 255;

/// The longest filter ID, in bytes. This server's IDs are short; a longer one cannot exist.
pub const MAX_FILTER_ID_BYTES: usize = 255;

/// The longest room tag, in bytes (Synapse's limit).
pub const MAX_TAG_BYTES: usize = 255;

/// The longest pusher `pushkey`, in bytes (spec: "Max length, 512 bytes").
pub const MAX_PUSHKEY_BYTES: usize = 512;
/// The longest pusher `app_id`, in characters (spec: "Max length, 64 chars").
pub const MAX_APP_ID_CHARS: usize = 64;

/// Whether `json` nests arrays and objects more than `max` deep. Counts brackets outside
/// strings in one pass without recursion, so it is safe on any input, valid JSON or not;
/// malformed input is left for the parser to reject.
pub fn json_too_deep(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether `value` is at most `max` bytes long; `what` names it in the refusal.
pub fn check_len(value: &str, max: usize, what: &str) -> Result<(), String> {
    if value.len() > max { Err(format!("{what} is longer than {max} bytes")) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert!(!json_too_deep(b"{}", 1));
        assert!(json_too_deep(b"{\"a\":{}}", 1));
        assert!(!json_too_deep(nested(64).as_bytes(), 64));
        assert!(json_too_deep(nested(65).as_bytes(), 64));
        assert!(!json_too_deep(b"[1,[2],{\"a\":[3]}]", 3));
        assert!(json_too_deep(b"[1,[2],{\"a\":[[3]]}]", 3));
        assert!(!json_too_deep(b"", 0));
        assert!(!json_too_deep(b"12", 0));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert!(!json_too_deep(br#"{"a":"[[[[{{{{"}"#, 1));
        // An escaped quote does not end the string.
        assert!(!json_too_deep(br#"{"a":"\"[[[[","b":1}"#, 1));
        // An escaped backslash does.
        assert!(json_too_deep(br#"{"a":"\\",[[]]}"#, 2));
    }

    #[test]
    fn malformed_input_is_not_a_panic() {
        assert!(!json_too_deep(b"]]]]}}}", 1));
        assert!(!json_too_deep(b"\"unterminated [[[[", 1));
        assert!(json_too_deep(&[b'['; 1_000_000], 64));
    }

    #[test]
    fn lengths_are_bytes() {
        assert!(check_len(&"x".repeat(255), 255, "type").is_ok());
        assert_eq!(check_len(&"x".repeat(256), 255, "type").unwrap_err(), "type is longer than 255 bytes");
        // 128 two-byte characters are 256 bytes.
        assert!(check_len(&"é".repeat(128), 255, "type").is_err());
    }
}
