//! Path normalization (SPEC §7), done before route matching.
//!
//! Percent-encoded unreserved characters are decoded, `.` and `..` segments
//! resolved, repeated slashes merged. Anything ambiguous is refused rather
//! than guessed: `%2F`, `%5C`, `%00`, a literal backslash, a `..` escaping the
//! root, a malformed escape, or a control character. Other escapes stay
//! encoded (hex upper-cased) so the upstream sees exactly what was matched.
//! `;` (literal or `%3B`) is refused too: servlet containers strip `;params`
//! before resolving dot segments, so `/public/..;/admin` would route here as
//! public and there as admin.

use std::borrow::Cow;

/// Why a path was refused; the caller answers 400 `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous(pub &'static str);

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a path that starts with `/` is already normal: no escape,
/// backslash, control or non-ASCII byte, no empty segment except the last
/// (`//`), no `.` or `..` segment. One pass, no searcher set-up: this runs
/// on every request.
fn is_clean(bytes: &[u8]) -> bool {
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
        if segment
            .iter()
            .any(|&b| b == b'%' || b == b'\\' || b <= b' ' || b >= 0x7f)
        {
            return false;
        }
    }
    true
}

/// Normalizes an origin-form path (it must start with `/`).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Ambiguous> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Ambiguous("path does not start with /"));
    }
    if bytes.contains(&b';') {
        return Err(Ambiguous("path parameter (;)"));
    }
    // Fast path: nothing to decode, merge or resolve.
    if is_clean(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode unreserved escapes; refuse the ambiguous ones.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Ambiguous("malformed percent-escape"));
                };
                let v = h * 16 + l;
                match v {
                    b'/' => return Err(Ambiguous("encoded slash")),
                    b';' => return Err(Ambiguous("encoded path parameter")),
                    b'\\' => return Err(Ambiguous("encoded backslash")),
                    0 => return Err(Ambiguous("encoded NUL")),
                    _ if is_unreserved(v) => decoded.push(char::from(v)),
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                        decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(Ambiguous("backslash")),
            0..=b' ' | 0x7f..=0xff => return Err(Ambiguous("control or non-ASCII byte")),
            _ => {
                decoded.push(char::from(b));
                i += 1;
            }
        }
    }
    // 2. Merge slashes, resolve dot segments.
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut stack: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(Ambiguous("`..` escapes the root"));
                }
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let ok = [
            ("/", "/"),
            ("/api/chat", "/api/chat"),
            ("/api//chat", "/api/chat"),
            ("//api///chat/", "/api/chat/"),
            ("/api/./chat", "/api/chat"),
            ("/api/x/../chat", "/api/chat"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/../admin", "/admin"),
            ("/api/%61bc", "/api/abc"),
            ("/api/a%20b", "/api/a%20b"),
            ("/api/a%3ab", "/api/a%3Ab"),
            ("/api/.", "/api/"),
            ("/api/x/..", "/api/"),
            ("/..a/b", "/..a/b"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "/api/public/..;/bill",
            "/api/bill;x/pay",
            "/a%3bb",
            "/a%3B",
            "/api/%2F",
            "/api/%2f",
            "/api%5C",
            "/a%00",
            "/..",
            "/api/../..",
            "/%2e%2e/x",
            "/a\\b",
            "/a%",
            "/a%zz",
            "/a%4",
            "api",
            "",
            "/a\0b",
            "/a\r\nb",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "/[a-z./%2eEfF0\\\\]{0,24}") {
            if let Ok(once) = normalize(&s) {
                let twice = normalize(&once).map(|c| c.into_owned());
                prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
                prop_assert!(!once.contains("//"));
                prop_assert!(!once.split('/').any(|seg| seg == "." || seg == ".."));
            }
        }

        #[test]
        fn the_fast_path_takes_exactly_the_clean_paths(s in "/[a-z./%2eEfF0\\\\ ]{0,24}") {
            // The definition the single pass replaced, as an oracle.
            let by_substrings = !s.bytes().any(|b| b == b'%' || b == b'\\' || b <= b' ' || b >= 0x7f)
                && !s.contains("//")
                && !s.contains("/./")
                && !s.contains("/../")
                && !s.ends_with("/.")
                && !s.ends_with("/..");
            prop_assert_eq!(is_clean(s.as_bytes()), by_substrings);
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".*") {
            let _ = normalize(&s);
        }
    }
}
