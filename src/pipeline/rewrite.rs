//! Byte-exact edits of a JSON body the gateway has already parsed strictly
//! (`context::parse_json_body`: valid UTF-8 JSON, bounded depth, no
//! duplicate keys): remove the member at a pointer (strip `Auth.Token`) or
//! replace a member's value (redact PII). Everything else — number spelling,
//! key order, whitespace — reaches the upstream exactly as the client sent
//! it; re-serializing through `serde_json::Value` would round big integers
//! and reorder keys.
//!
//! Only object members are addressed (array elements: `None`, and the
//! caller falls back to re-serializing). Hostile input never panics: every
//! index goes through `get`, and recursion is bounded by the pointer length.

/// Where a member sits in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    /// Index of the key's opening quote.
    key_start: usize,
    /// The value's first and one-past-last byte.
    value_start: usize,
    value_end: usize,
    /// The comma before the member, if it is not the first.
    comma_before: Option<usize>,
    /// The comma after the member, if it is not the last.
    comma_after: Option<usize>,
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; returns the index after the closing quote.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// `i` at the start of a value; returns the index after it.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        open @ (b'{' | b'[') => {
            let close = if *open == b'{' { b'}' } else { b']' };
            let mut j = ws(b, i + 1);
            if b.get(j) == Some(&close) {
                return Some(j + 1);
            }
            loop {
                if *open == b'{' {
                    j = string_end(b, j)?;
                    j = ws(b, j);
                    if b.get(j) != Some(&b':') {
                        return None;
                    }
                    j = ws(b, j + 1);
                }
                j = ws(b, value_end(b, j)?);
                match b.get(j)? {
                    b',' => j = ws(b, j + 1),
                    c if *c == close => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        _ => {
            // number, true, false, null
            let mut j = i;
            while matches!(b.get(j), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Pointer segments, unescaped (`~1` → `/`, `~0` → `~`). `""` is no segment.
fn segments(ptr: &str) -> Option<Vec<String>> {
    if ptr.is_empty() {
        return Some(Vec::new());
    }
    let rest = ptr.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn find(b: &[u8], start: usize, segs: &[String]) -> Option<Member> {
    let (first, rest) = segs.split_first()?;
    let i = ws(b, start);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut j = ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return None;
    }
    let mut comma_before = None;
    loop {
        let key_start = j;
        let key_end = string_end(b, j)?;
        let key: String = serde_json::from_slice(b.get(key_start..key_end)?).ok()?;
        j = ws(b, key_end);
        if b.get(j) != Some(&b':') {
            return None;
        }
        let value_start = ws(b, j + 1);
        let value_end = value_end(b, value_start)?;
        j = ws(b, value_end);
        let comma_after = (b.get(j) == Some(&b',')).then_some(j);
        if key == *first {
            if rest.is_empty() {
                return Some(Member {
                    key_start,
                    value_start,
                    value_end,
                    comma_before,
                    comma_after,
                });
            }
            return find(b, value_start, rest);
        }
        match comma_after {
            Some(c) => {
                comma_before = Some(c);
                j = ws(b, c + 1);
            }
            None => return None,
        }
    }
}

/// The body without the object member at `ptr`; `None` if it is not there
/// (or is an array element).
pub fn remove_member(body: &[u8], ptr: &str) -> Option<Vec<u8>> {
    let segs = segments(ptr)?;
    let m = find(body, 0, &segs)?;
    let (cut_start, cut_end) = match (m.comma_after, m.comma_before) {
        // `"k":v,` (and the space after the comma)
        (Some(after), _) => (m.key_start, ws(body, after + 1)),
        // `,"k":v` as the last member
        (None, Some(before)) => (before, m.value_end),
        // the only member
        (None, None) => (m.key_start, m.value_end),
    };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(body.get(..cut_start)?);
    out.extend_from_slice(body.get(cut_end..)?);
    Some(out)
}

/// The body with the value of the object member at `ptr` replaced by
/// `value` (already valid JSON text).
pub fn replace_value(body: &[u8], ptr: &str, value: &str) -> Option<Vec<u8>> {
    let segs = segments(ptr)?;
    let m = find(body, 0, &segs)?;
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(body.get(..m.value_start)?);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(body.get(m.value_end..)?);
    Some(out)
}

/// Escapes a key as one RFC 6901 pointer segment.
pub fn escape_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn rm(body: &str, ptr: &str) -> Option<String> {
        remove_member(body.as_bytes(), ptr).map(|b| String::from_utf8(b).expect("utf8"))
    }

    #[test]
    fn removes_members_keeping_everything_else_byte_exact() {
        let body = r#"{"Auth": {"Token": "t", "Scopes": ["a"]}, "big": 123456789012345678901234567890, "f": 1e2}"#;
        assert_eq!(
            rm(body, "/Auth/Token").as_deref(),
            Some(r#"{"Auth": {"Scopes": ["a"]}, "big": 123456789012345678901234567890, "f": 1e2}"#)
        );
        assert_eq!(
            rm(r#"{"Auth":{"Scopes":["a"],"Token":"t"}}"#, "/Auth/Token").as_deref(),
            Some(r#"{"Auth":{"Scopes":["a"]}}"#)
        );
        assert_eq!(
            rm(r#"{"Auth":{"Token":"t"}}"#, "/Auth/Token").as_deref(),
            Some(r#"{"Auth":{}}"#)
        );
        assert_eq!(
            rm(r#"{"a/b":1,"c":2}"#, "/a~1b").as_deref(),
            Some(r#"{"c":2}"#)
        );
        assert_eq!(rm(r#"{"Auth":{"Token":"t"}}"#, "/Auth/Nope"), None);
        assert_eq!(rm(r#"[{"Token":"t"}]"#, "/0/Token"), None);
        assert_eq!(
            rm(r#"{"x":"a\"b","Token":"t"}"#, "/Token").as_deref(),
            Some(r#"{"x":"a\"b"}"#)
        );
    }

    #[test]
    fn replaces_values() {
        let body = br#"{"CustomerInfo": {"email": "a@b.co", "n": 12345678901234567890123}}"#;
        let out = replace_value(body, "/CustomerInfo/email", "\"[redacted]\"").expect("found");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"CustomerInfo": {"email": "[redacted]", "n": 12345678901234567890123}}"#
        );
    }

    proptest! {
        // Removing via bytes agrees with removing via serde_json, and the
        // result is valid JSON.
        #[test]
        fn agrees_with_value_removal(keys in prop::collection::btree_set("[a-z~/]{1,4}", 1..5), pick in 0usize..5, spaced in any::<bool>()) {
            let keys: Vec<String> = keys.into_iter().collect();
            let mut obj = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                obj.insert(k.clone(), json!({"v": i, "s": "x,}"}));
            }
            let doc = Value::Object(obj);
            let text = if spaced { serde_json::to_string_pretty(&doc).expect("json") } else { doc.to_string() };
            let key = &keys[pick % keys.len()];
            let ptr = format!("/{}", escape_segment(key));
            let out = remove_member(text.as_bytes(), &ptr).expect("present");
            let parsed: Value = serde_json::from_slice(&out).expect("valid JSON");
            let mut want = doc.clone();
            if let Some(m) = want.as_object_mut() { m.remove(key); }
            prop_assert_eq!(parsed, want);
        }

        #[test]
        fn never_panics(body in ".{0,64}", ptr in "(/[a-z]{0,3}){0,3}") {
            let _ = remove_member(body.as_bytes(), &ptr);
            let _ = replace_value(body.as_bytes(), &ptr, "1");
        }
    }
}
