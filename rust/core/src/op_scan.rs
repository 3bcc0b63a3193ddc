//! Reads back the few top-level members of an encoded operation that dedup keys are made of
//! (`type`, `action`, `identifiers`, `anonymous_id`, `name`, `id`, `attributes`, `primary`,
//! `secondary`), for the rare paths that hold only the op's bytes: an operation that finally failed
//! (its keys are forgotten, so the caller's re-send is not taken for a duplicate) and a raw
//! operation that deletes or merges people (their identify keys are forgotten at intake).
//!
//! Not a general JSON parser: it finds where values start and end, and decodes strings. It accepts
//! any valid JSON object (whitespace included; a number or a literal is not checked), and gives up
//! (None) on other shapes: an op it cannot read has no keys to forget, which at worst keeps a
//! duplicate check until its TTL.

/// One member of an object: the key (decoded) and the value's raw bytes.
pub struct Member<'a> {
    pub key: String,
    pub value: &'a [u8],
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end (one past the closing quote) of the string starting at `at` (a quote).
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The end of the value starting at `at`.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            // Brackets are counted outside strings only; the value is checked no further.
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

/// The members of the object `bytes` holds, in order; None if it is not one.
pub fn members(bytes: &[u8]) -> Option<Vec<Member<'_>>> {
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    let mut out = Vec::new();
    if bytes.get(at) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = string_end(bytes, at)?;
        let key = decode_string(&bytes[at..key_end])?;
        at = skip_ws(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_ws(bytes, at + 1);
        let end = value_end(bytes, start)?;
        out.push(Member {
            key,
            value: &bytes[start..end],
        });
        at = skip_ws(bytes, end);
        match bytes.get(at)? {
            b',' => at = skip_ws(bytes, at + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// The value of `key` among `members`, if present (the first, as JSON readers do not agree on
/// duplicates and our encoder never writes one).
pub fn get<'a>(members: &[Member<'a>], key: &str) -> Option<&'a [u8]> {
    members.iter().find(|m| m.key == key).map(|m| m.value)
}

/// A JSON string's text (`raw` includes the quotes); None for anything else or a bad escape.
pub fn decode_string(raw: &[u8]) -> Option<String> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return String::from_utf8(inner.to_vec()).ok();
    }
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let escaped = *inner.get(i + 1)?;
        i += 2;
        let plain = match escaped {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut unit = hex4(inner.get(i..i + 4)?)?;
                i += 4;
                if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate: its low half must follow as another \u escape.
                    if inner.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(inner.get(i + 2..i + 6)?)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    i += 6;
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                }
                let c = char::from_u32(unit)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(plain);
    }
    String::from_utf8(out).ok()
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// A scalar member's text: a string decoded, a number as written (`7` and `"7"` name the same
/// customer, as at intake).
pub fn scalar_text(raw: &[u8]) -> Option<String> {
    match raw.first()? {
        b'"' => decode_string(raw),
        b'-' | b'0'..=b'9' => std::str::from_utf8(raw).ok().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_give_each_value_as_written() {
        let op = br#"{"type":"person","identifiers":{"id":"a\"}b"},"n":[1,{"x":"]"}],"t":-1.5e3,"z":null}"#;
        let found = members(op).unwrap();
        let keys: Vec<&str> = found.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["type", "identifiers", "n", "t", "z"]);
        assert_eq!(get(&found, "identifiers").unwrap(), br#"{"id":"a\"}b"}"#);
        assert_eq!(get(&found, "n").unwrap(), br#"[1,{"x":"]"}]"#);
        assert_eq!(get(&found, "t").unwrap(), b"-1.5e3");
        assert_eq!(get(&found, "z").unwrap(), b"null");
        assert!(get(&found, "missing").is_none());
        let spaced = members(b" { \"a\" : 1 , \"b\" :\n\"x\" } ").unwrap();
        assert_eq!(get(&spaced, "b").unwrap(), b"\"x\"");
        assert_eq!(members(b"{}").unwrap().len(), 0);
    }

    #[test]
    fn members_refuse_what_is_not_an_object() {
        for bad in [
            &b""[..],
            b"[1]",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{\"a\":\"x}",
            b"{a:1}",
            b"{\"a\":1 2}",
        ] {
            assert!(members(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn strings_decode_every_escape_and_surrogate_pairs() {
        assert_eq!(decode_string("\"plain é\"".as_bytes()).unwrap(), "plain é");
        assert_eq!(
            decode_string(br#""q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\ude00""#).unwrap(),
            "q\" b\\ s/ \u{8}\u{c}\n\r\t é 😀"
        );
        for bad in [
            &br#""\x""#[..],
            br#""\ud83d""#,
            br#""\ud83dx""#,
            br#""\u12""#,
            b"\"open",
            b"7",
        ] {
            assert!(
                decode_string(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_scalar_is_a_string_or_a_number_as_written() {
        assert_eq!(scalar_text(b"\"7\"").unwrap(), "7");
        assert_eq!(scalar_text(b"7").unwrap(), "7");
        assert_eq!(scalar_text(b"-12").unwrap(), "-12");
        assert!(scalar_text(b"{}").is_none() && scalar_text(b"true").is_none());
    }
}
