//! Compact JSON writing into a byte buffer, without pyo3: strings, integers, floats, and
//! checked decimal literals. The encoder (encode.rs) and the operation layout (ops.rs) build on it.
//!
//! Invariant: everything written is valid JSON for the value given; the writers never emit
//! whitespace, so an operation's byte length is exactly what Customer.io counts.

/// For each byte: 0 = copy as is; b'u' = `\u00XX`; otherwise the letter after a backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `s` as a quoted JSON string. Non-ASCII is written as raw UTF-8 (valid JSON, and
/// shorter than `\u` escapes, which matters for the 32 KB operation limit).
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    write_str_body(out, bytes);
    out.push(b'"');
}

/// The escaped body of a string, without quotes. `bytes` must be UTF-8 (only bytes < 0x80
/// are ever escaped, so multi-byte sequences pass through intact).
#[inline]
pub fn write_str_body(out: &mut Vec<u8>, bytes: &[u8]) {
    // Most strings need no escape at all: find the first byte that does, a word at a time, and
    // copy what comes before it in one piece (the byte loop below was ~16 % of a `track()` call's
    // instructions under callgrind).
    let clean = clean_prefix(bytes);
    put(out, &bytes[..clean]);
    if clean == bytes.len() {
        return;
    }
    let bytes = &bytes[clean..];
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        put(out, &bytes[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    put(out, &bytes[start..]);
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is below `n` (`n <= 0x80`; exact, no false positives: the classic
/// "has less" bit trick).
#[inline(always)]
const fn any_byte_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS != 0
}

/// Whether any byte of `word` equals `b`.
#[inline(always)]
const fn any_byte_is(word: u64, b: u8) -> bool {
    any_byte_below(word ^ (ONES * b as u64), 1)
}

/// How many leading bytes of `bytes` [`ESCAPE`] leaves as they are: control bytes, `"` and `\`
/// are the only ones it escapes, which three word tests find 8 bytes at a time.
#[inline]
fn clean_prefix(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if any_byte_below(word, 0x20) || any_byte_is(word, b'"') || any_byte_is(word, b'\\') {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && ESCAPE[bytes[i] as usize] == 0 {
        i += 1;
    }
    i
}

#[inline]
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    put(out, itoa::Buffer::new().format(v).as_bytes());
}

#[inline]
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    put(out, itoa::Buffer::new().format(v).as_bytes());
}

/// Writes a finite float as the shortest decimal that round-trips (Żmij, ~2.5x faster than ryu
/// here; the exponent form matches Python's `repr`: `1e+16`). Returns false, writing nothing, for
/// NaN and infinities, which JSON cannot express.
#[inline]
pub fn write_f64(out: &mut Vec<u8>, v: f64) -> bool {
    if !v.is_finite() {
        return false;
    }
    put(out, zmij::Buffer::new().format_finite(v).as_bytes());
    true
}

/// Appends `bytes` like `extend_from_slice`, but a slice of up to 16 bytes (most keys, numbers and
/// short values) is copied inline with two overlapping moves instead of a call to libc's memcpy,
/// which cost more than such a copy (~6 % of a `track()` call in `perf`).
#[inline(always)]
pub fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n > 16 {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(16);
    let src = bytes.as_ptr();
    // SAFETY: `reserve(16)` leaves at least 16 writable bytes after `len`, and every move below
    // reads inside `bytes[..n]` and writes inside `[len, len + n)` (the two moves of a size class
    // overlap when `n` is below twice the move's width, which is the point). `set_len` then
    // covers exactly the `n` bytes written.
    unsafe {
        let dst = out.as_mut_ptr().add(out.len());
        if n >= 8 {
            let head = src.cast::<u64>().read_unaligned();
            let tail = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(head);
            dst.add(n - 8).cast::<u64>().write_unaligned(tail);
        } else if n >= 4 {
            let head = src.cast::<u32>().read_unaligned();
            let tail = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(head);
            dst.add(n - 4).cast::<u32>().write_unaligned(tail);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(out.len() + n);
    }
}

/// Whether `s` is a JSON number literal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// Used for `Decimal`, whose `str()` is written verbatim so no digit is rounded away.
pub fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let int_len = digits(&mut i);
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Python-style `repr()` of a string key, for error paths (`data['it\'s']` reads like Python).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_exactly_what_json_requires() {
        assert_eq!(s(""), r#""""#);
        assert_eq!(s("plain"), r#""plain""#);
        assert_eq!(s("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(s("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(s("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(s("/ and \u{7f}"), "\"/ and \u{7f}\"");
        assert_eq!(s("é中😀"), "\"é中😀\"");
        assert_eq!(s("x\ny"), r#""x\ny""#);
    }

    #[test]
    fn every_control_character_is_escaped() {
        for c in 0u8..0x20 {
            let out = s(&(c as char).to_string());
            assert!(out.starts_with("\"\\"), "{c:#x} -> {out}");
            assert!(!out.bytes().any(|b| b < 0x20));
        }
    }

    #[test]
    fn integers_cover_the_64_bit_ranges() {
        let mut out = Vec::new();
        write_i64(&mut out, i64::MIN);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        out.push(b' ');
        write_i64(&mut out, 0);
        assert_eq!(out, b"-9223372036854775808 18446744073709551615 0");
    }

    #[test]
    fn the_word_scan_finds_exactly_the_bytes_the_table_escapes() {
        // Every byte value, at every position of a 1..=24 byte string of clean filler (so each
        // path of the scan, word and tail, meets it), escapes exactly as the byte-by-byte table says.
        for b in 0..=255u8 {
            for len in 1..=24usize {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let expected = if ESCAPE[b as usize] == 0 { len } else { at };
                    assert_eq!(
                        clean_prefix(&bytes),
                        expected,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        let mut out = Vec::new();
        write_str(&mut out, "0123456789abcdef\"quoted\"\ttab\u{1}é");
        assert_eq!(
            out,
            "\"0123456789abcdef\\\"quoted\\\"\\ttab\\u0001é\"".as_bytes()
        );
    }

    #[test]
    fn floats_round_trip_and_refuse_non_finite() {
        for v in [
            0.0,
            -0.0,
            1.5,
            0.1,
            1e300,
            -2.5e-308,
            123456789.125,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let mut out = Vec::new();
            assert!(write_f64(&mut out, v));
            let text = String::from_utf8(out).unwrap();
            assert!(is_json_number(&text), "{text}");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{text}"
            );
        }
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = Vec::new();
            assert!(!write_f64(&mut out, v));
            assert!(out.is_empty());
        }
    }

    #[test]
    fn json_number_grammar() {
        for ok in [
            "0",
            "-0",
            "12",
            "1.50",
            "1E+3",
            "1e-7",
            "-0.000001",
            "0E-7",
            "123456789012345678901234567890",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "sNaN",
            "1_0",
            " 1",
            "+1",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(py_repr("items"), "'items'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("new\nline\\"), "'new\\nline\\\\'");
        assert_eq!(py_repr("\u{1}"), "'\\x01'");
    }
}
