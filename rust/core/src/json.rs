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
    write_quoted(out, s.as_bytes(), None);
}

/// Writes `"key":`, the quoted string and the colon after it with one capacity check.
#[inline]
pub fn write_key(out: &mut Vec<u8>, key: &str) {
    write_quoted(out, key.as_bytes(), Some(b':'));
}

/// `bytes` (UTF-8) quoted, then `after` if given. Most strings need no escape at all, which a
/// scan of whole words finds without a byte loop; those are copied in one piece, quotes included,
/// after one `reserve` (escaping byte by byte, then a word scan with a byte tail, were 16 % and
/// then 26 % of a `track()` call's instructions under callgrind).
#[inline(always)]
fn write_quoted(out: &mut Vec<u8>, bytes: &[u8], after: Option<u8>) {
    if needs_escape(bytes) {
        write_escaped(out, bytes);
        if let Some(b) = after {
            out.push(b);
        }
        return;
    }
    let n = bytes.len();
    out.reserve(n + 3);
    // SAFETY: `reserve(n + 3)` leaves room for the quote, the `n` bytes, the closing quote and
    // `after` past `len`; `copy_short` writes exactly `dst[..n]` from `bytes[..n]` (no overlap:
    // `bytes` is not inside `out`'s spare capacity, which nothing else can borrow), and
    // `set_len` covers exactly what was written.
    unsafe {
        let len = out.len();
        let dst = out.as_mut_ptr().add(len);
        *dst = b'"';
        copy_short(dst.add(1), bytes);
        *dst.add(n + 1) = b'"';
        let written = match after {
            Some(b) => {
                *dst.add(n + 2) = b;
                n + 3
            }
            None => n + 2,
        };
        out.set_len(len + written);
    }
}

/// The quoted string, escaping what JSON requires (the rare path: `needs_escape` said so).
#[cold]
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
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
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is below `n` may be set, and one is set if any byte
/// is (`n <= 0x80`; as a whole the test is exact, no false positives: the classic "has less" bit
/// trick).
#[inline(always)]
const fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS
}

/// Whether a byte of `word` is one [`ESCAPE`] escapes: a control byte, `"` or `\`.
#[inline(always)]
const fn dirty(word: u64) -> bool {
    (bytes_below(word, 0x20)
        | bytes_below(word ^ (ONES * b'"' as u64), 1)
        | bytes_below(word ^ (ONES * b'\\' as u64), 1))
        != 0
}

/// Whether any byte of `bytes` needs an escape. Reads whole words only: the words that fit, then
/// the last 8 bytes (overlapping what was read; a clean byte read twice is still clean), and a
/// string shorter than a word as two overlapping halves or three bytes padded with clean ones.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let p = bytes.as_ptr();
    // SAFETY: every read below lies inside `bytes[..n]`: words at `i` with `i + 8 < n`, the word
    // at `n - 8` when `n >= 8`, halves at 0 and `n - 4` when `n >= 4`, bytes at 0, `n / 2` and
    // `n - 1` when `n >= 1`.
    unsafe {
        if n >= 8 {
            let mut i = 0;
            while i + 8 < n {
                if dirty(p.add(i).cast::<u64>().read_unaligned()) {
                    return true;
                }
                i += 8;
            }
            dirty(p.add(n - 8).cast::<u64>().read_unaligned())
        } else if n >= 4 {
            let head = p.cast::<u32>().read_unaligned() as u64;
            let tail = p.add(n - 4).cast::<u32>().read_unaligned() as u64;
            dirty(head | tail << 32)
        } else if n > 0 {
            let fill = (ONES * b'a' as u64) & !0xff_ffff;
            let word = *p as u64 | (*p.add(n / 2) as u64) << 8 | (*p.add(n - 1) as u64) << 16;
            dirty(fill | word)
        } else {
            false
        }
    }
}

/// Copies `src` to `dst`: a slice of up to 16 bytes (most keys, numbers and short values) inline,
/// with two overlapping moves, instead of a call to libc's memcpy, which cost more than such a
/// copy (~6 % of a `track()` call in `perf`).
///
/// # Safety
/// `dst` must be valid for `src.len()` writes and not overlap `src`.
#[inline(always)]
unsafe fn copy_short(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let s = src.as_ptr();
    // SAFETY: every move reads inside `src[..n]` and writes inside `dst[..n]` (the two moves of a
    // size class overlap when `n` is below twice the move's width, which is the point); the
    // caller's contract covers `dst`.
    unsafe {
        if n > 16 {
            std::ptr::copy_nonoverlapping(s, dst, n);
        } else if n >= 8 {
            let head = s.cast::<u64>().read_unaligned();
            let tail = s.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(head);
            dst.add(n - 8).cast::<u64>().write_unaligned(tail);
        } else if n >= 4 {
            let head = s.cast::<u32>().read_unaligned();
            let tail = s.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(head);
            dst.add(n - 4).cast::<u32>().write_unaligned(tail);
        } else if n > 0 {
            *dst = *s;
            *dst.add(n / 2) = *s.add(n / 2);
            *dst.add(n - 1) = *s.add(n - 1);
        }
    }
}

#[inline]
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if (0..100).contains(&v) {
        // Counts, quantities, flags as ints: most ints in event data are small. Written without
        // itoa's buffer (which cost more than the rest of writing the int).
        let v = v as u8;
        if v < 10 {
            out.push(b'0' + v);
        } else {
            out.extend_from_slice(&[b'0' + v / 10, b'0' + v % 10]);
        }
        return;
    }
    write_i64_digits(out, v);
}

/// The general case, out of line: itoa's buffer made the small-int path above pay for saving
/// registers on every call (34 of a `track()` call's instructions under callgrind).
#[inline(never)]
fn write_i64_digits(out: &mut Vec<u8>, v: i64) {
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

/// Appends `bytes` like `extend_from_slice`, copying a short slice inline ([`copy_short`]).
#[inline(always)]
pub fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    out.reserve(n);
    // SAFETY: `reserve(n)` leaves `n` writable bytes past `len`, which `bytes` (borrowed apart
    // from `out`) cannot overlap; `set_len` covers exactly the `n` bytes written.
    unsafe {
        copy_short(out.as_mut_ptr().add(out.len()), bytes);
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
        for v in -150..=150i64 {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }

    #[test]
    fn the_word_scan_finds_exactly_the_bytes_the_table_escapes() {
        // Every byte value, at every position of a 1..=24 byte string of clean filler (so each
        // path of the scan, whole words, the overlapping last word, halves and padded bytes,
        // meets it), needs an escape exactly when the byte-by-byte table says so.
        for b in 0..=255u8 {
            for len in 1..=24usize {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(
                        needs_escape(&bytes),
                        ESCAPE[b as usize] != 0,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        let mut out = Vec::new();
        write_str(&mut out, "0123456789abcdef\"quoted\"\ttab\u{1}é");
        assert_eq!(
            out,
            "\"0123456789abcdef\\\"quoted\\\"\\ttab\\u0001é\"".as_bytes()
        );
    }

    #[test]
    fn keys_and_strings_of_every_short_length_copy_whole() {
        // Each length crosses a different copy (1-3 bytes, halves, overlapping words, memcpy),
        // written after a prefix so an offset `len` is exercised too.
        for len in 0..=40usize {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let mut out = b"{".to_vec();
            write_key(&mut out, &text);
            write_str(&mut out, &text);
            assert_eq!(out, format!("{{\"{text}\":\"{text}\"").as_bytes());
            let mut put_out = b"x".to_vec();
            put(&mut put_out, text.as_bytes());
            assert_eq!(put_out, format!("x{text}").as_bytes());
        }
        let mut out = Vec::new();
        write_key(&mut out, "a\"b");
        assert_eq!(out, b"\"a\\\"b\":");
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
