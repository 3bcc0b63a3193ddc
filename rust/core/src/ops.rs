//! Track API v2 operation layout and Customer.io's limits, without pyo3.
//!
//! An operation is written into one buffer in pieces: this module writes the fixed parts (head,
//! tail), the encoder writes the caller's dicts in between, so nothing is copied twice. Key order
//! is fixed (`type`, `identifiers`, `action`, ...) because tests and the emulator compare bytes.

use crate::error::CoreError;
use crate::json;

pub const MAX_OP_BYTES: usize = 32_768;
pub const MAX_BATCH_BYTES: usize = 500_000;
pub const MAX_ID_BYTES: usize = 150;
pub const MAX_ATTRIBUTES: usize = 300;
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 150;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1000;
pub const MAX_EVENT_NAME_BYTES: usize = 100;

/// Who an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// `"identifiers":{"id":...}` (an id, or an email if the workspace identifies by email).
    Id(&'a str),
    /// `"identifiers":{"cio_id":...}`, from a customer id written `cio_<value>`.
    CioId(&'a str),
    /// `"identifiers":{"anonymous_id":...}` (events only). v2 documents no anonymous event (only v1's
    /// `POST /api/v1/events`); this is the form Segment's and RudderStack's Customer.io destinations send
    /// to `/api/v2/batch` (the top-level `anonymous_id` written before appears in no spec or client).
    Anonymous(&'a str),
}

/// Validates a customer id and picks its identifier: `cio_<x>` addresses Customer.io's own id.
pub fn customer_subject(id: &str) -> Result<Subject<'_>, CoreError> {
    if id.is_empty() {
        return Err(CoreError::invalid("customer_id: must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CoreError::limit(format!(
            "customer_id: {} bytes, Customer.io allows {MAX_ID_BYTES}",
            id.len()
        )));
    }
    match id.strip_prefix("cio_") {
        Some("") => Err(CoreError::invalid(
            "customer_id: 'cio_' without a cio_id after it",
        )),
        Some(cio_id) => Ok(Subject::CioId(cio_id)),
        None => Ok(Subject::Id(id)),
    }
}

pub fn anonymous_subject(id: &str) -> Result<Subject<'_>, CoreError> {
    if id.is_empty() {
        return Err(CoreError::invalid("anonymous_id: must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CoreError::limit(format!(
            "anonymous_id: {} bytes, Customer.io allows {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(Subject::Anonymous(id))
}

/// Writes `"identifiers":{...}` (no surrounding comma).
pub fn write_subject(out: &mut Vec<u8>, subject: Subject<'_>) {
    match subject {
        Subject::Id(id) => {
            out.extend_from_slice(b"\"identifiers\":{\"id\":");
            json::write_str(out, id);
            out.push(b'}');
        }
        Subject::CioId(id) => {
            out.extend_from_slice(b"\"identifiers\":{\"cio_id\":");
            json::write_str(out, id);
            out.push(b'}');
        }
        Subject::Anonymous(id) => {
            out.extend_from_slice(b"\"identifiers\":{\"anonymous_id\":");
            json::write_str(out, id);
            out.push(b'}');
        }
    }
}

/// The event name as sent: stripped (Customer.io trims it too, and dedup should agree), non-empty,
/// at most 100 bytes.
pub fn event_name(name: &str) -> Result<&str, CoreError> {
    // Most names begin and end with a visible ASCII character, which no whitespace (ASCII or
    // Unicode, whose UTF-8 bytes are all >= 0x80) can be: nothing to trim, and `trim`'s Unicode
    // checks from both ends (~50 instructions of a `track()` call) are skipped.
    let visible = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b < 0x80);
    let bytes = name.as_bytes();
    let name = if visible(bytes.first()) && visible(bytes.last()) {
        name
    } else {
        name.trim()
    };
    if name.is_empty() {
        return Err(CoreError::invalid("name: must not be empty"));
    }
    if name.len() > MAX_EVENT_NAME_BYTES {
        return Err(CoreError::limit(format!(
            "name: {} bytes, Customer.io allows {MAX_EVENT_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(name)
}

pub fn check_attribute_count(root: &str, count: usize) -> Result<(), CoreError> {
    if count > MAX_ATTRIBUTES {
        return Err(CoreError::limit(format!(
            "{root}: {count} attributes, Customer.io allows {MAX_ATTRIBUTES}"
        )));
    }
    Ok(())
}

pub fn check_attribute_name(root: &str, name: &str) -> Result<(), CoreError> {
    if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
        return Err(CoreError::limit(format!(
            "{root}[{}]: name is {} bytes, Customer.io allows {MAX_ATTRIBUTE_NAME_BYTES}",
            json::py_repr(name),
            name.len()
        )));
    }
    Ok(())
}

pub fn check_attribute_value(root: &str, name: &str, encoded_len: usize) -> Result<(), CoreError> {
    if encoded_len > MAX_ATTRIBUTE_VALUE_BYTES {
        return Err(CoreError::limit(format!(
            "{root}[{}]: value is {encoded_len} bytes, Customer.io allows {MAX_ATTRIBUTE_VALUE_BYTES}",
            json::py_repr(name)
        )));
    }
    Ok(())
}

/// `what` names the operation for the message, e.g. `event 'Signed Up'`; it is only called (and
/// allocates) when the limit is exceeded, since this check runs on every call.
#[inline]
pub fn check_op_size(len: usize, what: impl FnOnce() -> String) -> Result<(), CoreError> {
    if len > MAX_OP_BYTES {
        return Err(CoreError::limit(format!(
            "{}: operation is {len} bytes encoded, Customer.io allows {MAX_OP_BYTES}",
            what()
        )));
    }
    Ok(())
}

/// Unix seconds from a float timestamp, floored (so 1.9 is second 1, like an int conversion of a
/// positive value, and pre-1970 values stay consistent).
pub fn timestamp_from_f64(field: &str, v: f64) -> Result<i64, CoreError> {
    if !v.is_finite() {
        return Err(CoreError::invalid(format!(
            "{field}: {v} is not a finite number"
        )));
    }
    let floored = v.floor();
    // i64::MAX as f64 rounds up to 2^63, so the upper comparison must be strict.
    if floored < i64::MIN as f64 || floored >= i64::MAX as f64 {
        return Err(CoreError::invalid(format!(
            "{field}: {v} is outside the 64-bit range"
        )));
    }
    Ok(floored as i64)
}

/// `{"type":"person",<subject>,"action":"identify","attributes":` — the attributes dict follows,
/// then [`identify_tail`].
pub fn identify_head(out: &mut Vec<u8>, subject: Subject<'_>) {
    out.extend_from_slice(b"{\"type\":\"person\",");
    write_subject(out, subject);
    out.extend_from_slice(b",\"action\":\"identify\",\"attributes\":");
}

pub fn identify_tail(out: &mut Vec<u8>, timestamp: i64) {
    out.extend_from_slice(b",\"timestamp\":");
    json::write_i64(out, timestamp);
    out.push(b'}');
}

/// `{"type":"person",<subject>,"action":<action>,"name":..,"id":..,"timestamp":N` — then either
/// `,"attributes":` + data + `}` or just `}` ([`event_attributes_key`], [`close`]).
pub fn event_head(
    out: &mut Vec<u8>,
    subject: Subject<'_>,
    action: &str,
    name: &str,
    id: &[u8],
    timestamp: i64,
) {
    out.extend_from_slice(b"{\"type\":\"person\",");
    write_subject(out, subject);
    // The three actions an event can have, with the keys around them, as one piece each (an
    // action is checked against these before any op is built; anything else is still written).
    match action {
        "event" => out.extend_from_slice(br#","action":"event","name":"#),
        "page" => out.extend_from_slice(br#","action":"page","name":"#),
        "screen" => out.extend_from_slice(br#","action":"screen","name":"#),
        other => {
            out.extend_from_slice(b",\"action\":");
            json::write_str(out, other);
            out.extend_from_slice(b",\"name\":");
        }
    }
    json::write_str(out, name);
    out.extend_from_slice(b",\"id\":\"");
    // A ULID is ASCII alphanumerics only: nothing to escape. It arrives in its canonical upper
    // case (`ulid::generate`, or a caller's id through `ulid::canonical`), so it is copied as is.
    debug_assert!(
        !id.iter().any(u8::is_ascii_lowercase),
        "a ULID not in canonical form"
    );
    out.extend_from_slice(id);
    out.extend_from_slice(b"\",\"timestamp\":");
    json::write_i64(out, timestamp);
}

pub fn event_attributes_key(out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"attributes\":");
}

pub fn close(out: &mut Vec<u8>) {
    out.push(b'}');
}

/// `{"type":"person","identifiers":{..},"action":<action>` — the caller then splices the fields
/// with [`splice_fields`].
pub fn person_head(out: &mut Vec<u8>, subject: Subject<'_>, action: &str) {
    out.extend_from_slice(b"{\"type\":\"person\",");
    write_subject(out, subject);
    out.extend_from_slice(b",\"action\":");
    json::write_str(out, action);
}

/// Keys that `person()` writes itself; a field with one of these names would duplicate a key.
pub const PERSON_RESERVED_KEYS: [&str; 3] = ["type", "identifiers", "action"];

/// `out[start..]` holds an encoded JSON object (the fields) written right after a head. Turns it
/// into the rest of the operation: `{}` becomes `}`; `{"a":1}` becomes `,"a":1}`.
pub fn splice_fields(out: &mut Vec<u8>, start: usize) {
    debug_assert_eq!(out.get(start), Some(&b'{'));
    if out.len() - start == 2 {
        out.truncate(start);
        out.push(b'}');
    } else {
        out[start] = b',';
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn subjects() {
        assert_eq!(customer_subject("42"), Ok(Subject::Id("42")));
        assert_eq!(customer_subject("cio_abc"), Ok(Subject::CioId("abc")));
        assert_eq!(
            customer_subject("").unwrap_err().message,
            "customer_id: must not be empty"
        );
        assert_eq!(
            customer_subject("cio_").unwrap_err().kind,
            ErrorKind::Invalid
        );
        let at_limit = "x".repeat(150);
        assert!(customer_subject(&at_limit).is_ok());
        let over = "x".repeat(151);
        let err = customer_subject(&over).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert_eq!(
            err.message,
            "customer_id: 151 bytes, Customer.io allows 150"
        );
        assert_eq!(anonymous_subject("").unwrap_err().kind, ErrorKind::Invalid);

        let mut out = Vec::new();
        write_subject(&mut out, Subject::CioId("a\"b"));
        out.push(b' ');
        write_subject(&mut out, Subject::Anonymous("anon"));
        assert_eq!(
            text(out),
            r#""identifiers":{"cio_id":"a\"b"} "identifiers":{"anonymous_id":"anon"}"#
        );
    }

    #[test]
    fn identify_layout() {
        let mut out = Vec::new();
        identify_head(&mut out, Subject::Id("u1"));
        out.extend_from_slice(b"{\"plan\":\"pro\"}");
        identify_tail(&mut out, 1_700_000_000);
        assert_eq!(
            text(out),
            r#"{"type":"person","identifiers":{"id":"u1"},"action":"identify","attributes":{"plan":"pro"},"timestamp":1700000000}"#
        );
    }

    #[test]
    fn event_layout_with_and_without_data() {
        let id = b"01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let mut out = Vec::new();
        event_head(&mut out, Subject::Id("u1"), "event", "Signed Up", id, 5);
        event_attributes_key(&mut out);
        out.extend_from_slice(b"{\"a\":1}");
        close(&mut out);
        assert_eq!(
            text(out),
            r#"{"type":"person","identifiers":{"id":"u1"},"action":"event","name":"Signed Up","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5,"attributes":{"a":1}}"#
        );
        let mut out = Vec::new();
        event_head(&mut out, Subject::Anonymous("a1"), "page", "/home", id, 5);
        close(&mut out);
        assert_eq!(
            text(out),
            r#"{"type":"person","identifiers":{"anonymous_id":"a1"},"action":"page","name":"/home","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5}"#
        );
        // The third action written as one piece, and any other action written as a JSON string.
        for (action, written) in [("screen", r#""screen""#), ("odd\"one", r#""odd\"one""#)] {
            let mut out = Vec::new();
            event_head(&mut out, Subject::Id("u1"), action, "Home", id, 5);
            close(&mut out);
            assert_eq!(
                text(out),
                format!(
                    r#"{{"type":"person","identifiers":{{"id":"u1"}},"action":{written},"name":"Home","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5}}"#
                )
            );
        }
    }

    #[test]
    fn person_fields_are_spliced() {
        let mut out = Vec::new();
        person_head(&mut out, Subject::Id("u1"), "delete");
        let start = out.len();
        out.extend_from_slice(b"{}");
        splice_fields(&mut out, start);
        assert_eq!(
            text(out),
            r#"{"type":"person","identifiers":{"id":"u1"},"action":"delete"}"#
        );

        let mut out = Vec::new();
        person_head(&mut out, Subject::CioId("c9"), "add_device");
        let start = out.len();
        out.extend_from_slice(br#"{"device":{"token":"t","platform":"ios"}}"#);
        splice_fields(&mut out, start);
        assert_eq!(
            text(out),
            r#"{"type":"person","identifiers":{"cio_id":"c9"},"action":"add_device","device":{"token":"t","platform":"ios"}}"#
        );
    }

    #[test]
    fn names_and_limits() {
        assert_eq!(event_name("  Signed Up \n"), Ok("Signed Up"));
        // Every kind of whitespace at either end is trimmed, whichever end the fast check looks at.
        for ws in ["\u{85}", "\u{a0}", "\u{3000}", "\t", "\u{b}", "\u{c}", "\r"] {
            assert_eq!(event_name(&format!("{ws}A b")), Ok("A b"), "{ws:?}");
            assert_eq!(event_name(&format!("A b{ws}")), Ok("A b"), "{ws:?}");
        }
        assert_eq!(event_name("é"), Ok("é"));
        assert_eq!(event_name("\u{1f}x\u{7f}"), Ok("\u{1f}x\u{7f}")); // not whitespace
        assert_eq!(
            event_name(" \t").unwrap_err().message,
            "name: must not be empty"
        );
        assert!(event_name(&"n".repeat(100)).is_ok());
        assert_eq!(
            event_name(&"n".repeat(101)).unwrap_err().kind,
            ErrorKind::Limit
        );

        assert!(check_attribute_count("attributes", 300).is_ok());
        assert_eq!(
            check_attribute_count("attributes", 301)
                .unwrap_err()
                .message,
            "attributes: 301 attributes, Customer.io allows 300"
        );
        assert!(check_attribute_name("attributes", &"k".repeat(150)).is_ok());
        assert_eq!(
            check_attribute_name("attributes", &"k".repeat(151))
                .unwrap_err()
                .kind,
            ErrorKind::Limit
        );
        assert!(check_attribute_value("attributes", "bio", 1000).is_ok());
        assert_eq!(
            check_attribute_value("attributes", "bio", 1200)
                .unwrap_err()
                .message,
            "attributes['bio']: value is 1200 bytes, Customer.io allows 1000"
        );
        assert!(check_op_size(MAX_OP_BYTES, || unreachable!()).is_ok());
        assert_eq!(
            check_op_size(MAX_OP_BYTES + 1, || "event 'x'".into())
                .unwrap_err()
                .message,
            "event 'x': operation is 32769 bytes encoded, Customer.io allows 32768"
        );
    }

    #[test]
    fn float_timestamps() {
        assert_eq!(timestamp_from_f64("timestamp", 1.9), Ok(1));
        assert_eq!(timestamp_from_f64("timestamp", -0.5), Ok(-1));
        assert_eq!(
            timestamp_from_f64("timestamp", f64::NAN).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert!(timestamp_from_f64("timestamp", 1e19).is_err());
        assert!(timestamp_from_f64("timestamp", 9.2e18).is_ok());
    }
}
