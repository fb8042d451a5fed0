//! The chat context object and the `lwicontexts` claim: strict body parsing,
//! validation, PII checks (SPEC §1, §4 `context_claim`, §5, §6).
//!
//! Contract:
//!
//! - [`parse_json_body`] accepts only UTF-8 JSON with at most [`MAX_DEPTH`]
//!   nested arrays/objects and no duplicate key in any object. Deeper input is
//!   refused before it can exhaust the stack; a duplicate key is refused rather
//!   than guessing which `Auth.Token` the client meant (the extractor, the
//!   stripper and the upstream could otherwise each pick a different one).
//! - [`pointer`] and [`remove_pointer`] use exactly the RFC 6901 reading of
//!   `serde_json::Value::pointer` (which the extractor also uses), so whatever
//!   a `body:` locator finds is what `credentials.strip` removes.
//! - [`validate`] checks every known member of the context object and turns
//!   the forwarded ones into header values that are guaranteed valid: visible
//!   ASCII and space only, never CR, LF, NUL or DEL. Unknown members are
//!   ignored; a member whose value is JSON `null` counts as absent (as it does
//!   for the context locator and `body:` token locators); any other wrong type
//!   is [`Rejection::InvalidContext`] naming the field (`Auth.Scopes[1]`,
//!   `CustomerInfo.category`). Type errors win over PII refusals.
//! - Only `CustomerInfo` values are scanned for PII ([`looks_like_pii`]): they
//!   are free text; keys are attribute names agreed with the operator.
//! - [`parse_lwicontexts`] accepts only a string claim holding a JSON object of
//!   primitives, parsed as strictly as a body.
//!
//! Everything here is pure (no I/O) and total: hostile input yields an error,
//! never a panic.

use std::cell::Cell;
use std::fmt;

use http::HeaderValue;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::config::PiiMode;
use crate::error::Rejection;

/// The deepest nesting of arrays and objects a body may have: `[]` is depth 1,
/// a scalar depth 0. Real context objects need 3.
pub const MAX_DEPTH: usize = 32;

/// Longest `ExternalSessionId` / `ExternalSessionType`, in bytes.
pub const MAX_SESSION_BYTES: usize = 256;

/// What replaces a `CustomerInfo` value that looks like PII in `redact` mode.
pub const REDACTED: &str = "[redacted]";

/// The `field` reported when the context locator points at something that is
/// not a JSON object.
pub const CONTEXT_FIELD: &str = "(context)";

// ---------------------------------------------------------------------------
// Strict JSON
// ---------------------------------------------------------------------------

/// Why a body is not acceptable JSON. All map to `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Not UTF-8 JSON (including trailing data, lone surrogates, numbers out of range).
    Syntax,
    /// Arrays/objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An object has the same key twice (compared after unescaping).
    DuplicateKey,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::Syntax => "the body is not valid JSON",
            BodyError::TooDeep => "the body's JSON is nested too deeply",
            BodyError::DuplicateKey => "the body's JSON has a duplicate key",
        })
    }
}

impl std::error::Error for BodyError {}

/// Parses a request body as JSON strictly: UTF-8 JSON, nesting depth at most
/// [`MAX_DEPTH`] (deeper is an error, never a stack overflow), and a duplicate
/// key in any object is an error. The first fault met while reading wins, so
/// an unterminated 40-deep array is `TooDeep`, not `Syntax`.
pub fn parse_json_body(bytes: &[u8]) -> Result<Value, BodyError> {
    let fault = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictSeed {
        depth: 0,
        fault: &fault,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    // serde_json's error cannot say *which* of our own checks failed; the seed
    // records it on the side before returning its (opaque) custom error.
    parsed.map_err(|_| fault.take().unwrap_or(BodyError::Syntax))
}

/// Builds a `Value` like `Value::deserialize`, but counts depth and refuses
/// duplicate keys. `depth` is the number of containers around the value.
#[derive(Clone, Copy)]
struct StrictSeed<'f> {
    depth: usize,
    fault: &'f Cell<Option<BodyError>>,
}

impl StrictSeed<'_> {
    fn fail<E: de::Error>(self, why: BodyError) -> E {
        self.fault.set(Some(why));
        E::custom(why)
    }

    /// The seed for the members of a container at this position, or an error
    /// when that container would be too deep.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(BodyError::TooDeep));
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
            fault: self.fault,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never produces a non-finite float; null is its own mapping.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(self.fail(BodyError::DuplicateKey));
            }
            let value = map.next_value_seed(inner)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

// ---------------------------------------------------------------------------
// JSON pointers
// ---------------------------------------------------------------------------

/// RFC 6901 pointer lookup; `""` is the whole document. This is
/// `serde_json::Value::pointer`, the reading [`remove_pointer`] mirrors.
pub fn pointer<'a>(doc: &'a Value, ptr: &str) -> Option<&'a Value> {
    doc.pointer(ptr)
}

/// Removes the member (or array element) at an RFC 6901 pointer and returns
/// whether something was removed. The whole document (`""`) cannot be removed.
/// `remove_pointer(doc, p)` is true exactly when `pointer(doc, p)` was `Some`
/// for a non-empty `p`.
pub fn remove_pointer(doc: &mut Value, ptr: &str) -> bool {
    if !ptr.starts_with('/') {
        return false;
    }
    let Some((parent, last)) = ptr.rsplit_once('/') else {
        return false;
    };
    // Same unescaping order as serde_json: `~01` is `~1`, not `/`.
    let token = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(members)) => members.remove(&token).is_some(),
        Some(Value::Array(items)) => match array_index(&token) {
            Some(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// serde_json's (private) array-index rule: decimal, no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

// ---------------------------------------------------------------------------
// ASCII JSON
// ---------------------------------------------------------------------------

/// Compact JSON in which every character outside visible ASCII and space is
/// escaped: non-ASCII as `\uXXXX` (surrogate pairs for astral characters),
/// controls and DEL as `\uXXXX` or their short escapes. The result is always a
/// valid HTTP header value and parses back to `v`.
///
/// Hand-written rather than serde_json + post-processing because serde_json
/// leaves DEL (0x7F) raw, which `HeaderValue` refuses.
pub fn ascii_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v);
    out
}

fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // Number's Display is its JSON form (itoa / shortest round-trip float).
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_json_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(out, key);
                out.push(':');
                write_json(out, value);
            }
            out.push('}');
        }
    }
}

fn write_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(char::from(HEX[usize::from((*unit >> shift) & 0xf)]));
                    }
                }
            }
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// The context object
// ---------------------------------------------------------------------------

/// The validated context object (SPEC §5). Header values are ready to set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Context {
    /// `Auth.Scopes`, in the client's order (duplicates kept).
    pub requested_scopes: Option<Vec<String>>,
    /// `CustomerInfo` as compact ASCII JSON, after PII handling.
    pub customer_info: Option<HeaderValue>,
    /// `Segments` as a compact ASCII JSON array.
    pub segments: Option<HeaderValue>,
    /// `CompanySubdivision` as compact ASCII JSON (a string keeps its quotes).
    pub subdivision: Option<HeaderValue>,
    /// `ExternalSessionId`, the plain string.
    pub session_id: Option<HeaderValue>,
    /// `ExternalSessionType`, the plain string.
    pub session_type: Option<HeaderValue>,
    /// How many `CustomerInfo` values were redacted (a log field).
    pub pii_redacted: usize,
}

/// Validates the context object found at the route's `context` locator.
///
/// `ctx` must be a JSON object (else `InvalidContext { field: "(context)" }`).
/// Members are checked in a fixed order (Auth.Token, Auth.Scopes, Auth.Cookies,
/// Auth.Headers, Auth.Body, CustomerInfo, ExternalSessionId,
/// ExternalSessionType, CompanySubdivision, Segments; object keys in sorted
/// order), so the reported field is deterministic. PII in `CustomerInfo` is
/// handled per `pii` only after every type check has passed.
pub fn validate(ctx: &Value, pii: PiiMode) -> Result<Context, Rejection> {
    let obj = ctx.as_object().ok_or_else(|| invalid(CONTEXT_FIELD))?;
    let mut out = Context::default();

    if let Some(auth) = member(obj, "Auth") {
        let auth = auth.as_object().ok_or_else(|| invalid("Auth"))?;
        // `Auth.Token` is type-checked here and read by the `body:` locator;
        // it is never copied into the (Debug) context struct.
        if let Some(token) = member(auth, "Token") {
            token.as_str().ok_or_else(|| invalid("Auth.Token"))?;
        }
        if let Some(scopes) = member(auth, "Scopes") {
            out.requested_scopes = Some(requested_scopes(scopes)?);
        }
        for (name, field) in [
            ("Cookies", "Auth.Cookies"),
            ("Headers", "Auth.Headers"),
            ("Body", "Auth.Body"),
        ] {
            if let Some(v) = member(auth, name) {
                string_object(v, field)?;
            }
        }
    }

    let customer_info = member(obj, "CustomerInfo")
        .map(|v| string_object(v, "CustomerInfo"))
        .transpose()?;

    if let Some(v) = member(obj, "ExternalSessionId") {
        out.session_id = Some(session_value(v, "ExternalSessionId")?);
    }
    if let Some(v) = member(obj, "ExternalSessionType") {
        out.session_type = Some(session_value(v, "ExternalSessionType")?);
    }

    if let Some(v) = member(obj, "CompanySubdivision") {
        match v {
            Value::String(_) => {}
            Value::Object(_) => {
                string_object(v, "CompanySubdivision")?;
            }
            _ => return Err(invalid("CompanySubdivision")),
        }
        out.subdivision = Some(json_header(v, "CompanySubdivision")?);
    }

    if let Some(v) = member(obj, "Segments") {
        let items = v.as_array().ok_or_else(|| invalid("Segments"))?;
        if let Some(i) = items.iter().position(|s| !s.is_string()) {
            return Err(invalid(&format!("Segments[{i}]")));
        }
        out.segments = Some(json_header(v, "Segments")?);
    }

    // PII last: a malformed context is a 400 whatever its contents.
    if let Some(info) = customer_info {
        let (info, redacted) = customer_info_pii(info, pii)?;
        out.pii_redacted = redacted;
        out.customer_info = Some(json_header(&Value::Object(info), "CustomerInfo")?);
    }

    Ok(out)
}

fn invalid(field: &str) -> Rejection {
    Rejection::InvalidContext {
        field: field.to_owned(),
    }
}

/// A member, with JSON `null` read as absent.
fn member<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// The dotted name of `parent`'s member `key`: `CustomerInfo.category` for an
/// ordinary key, `CustomerInfo["a.b"]` (ASCII JSON, at most 64 characters of
/// the key) for one that would be ambiguous, empty, long or unprintable.
fn child_field(parent: &str, key: &str) -> String {
    const MAX_SHOWN: usize = 64;
    let plain = !key.is_empty()
        && key.len() <= MAX_SHOWN
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'[' | b']' | b'"' | b'\\'));
    if plain {
        return format!("{parent}.{key}");
    }
    let mut shown: String = key.chars().take(MAX_SHOWN).collect();
    if shown.len() < key.len() {
        shown.push_str("...");
    }
    format!("{parent}[{}]", ascii_json(&Value::String(shown)))
}

/// An object whose values are all strings.
fn string_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Rejection> {
    let members = v.as_object().ok_or_else(|| invalid(field))?;
    match members.iter().find(|(_, value)| !value.is_string()) {
        Some((key, _)) => Err(invalid(&child_field(field, key))),
        None => Ok(members),
    }
}

/// `Auth.Scopes`: an array of RFC 6749 scope-tokens. A string with a space,
/// quote or backslash (or an empty one) could not be one granted scope and
/// would change meaning once joined into the space-separated scopes header.
fn requested_scopes(v: &Value) -> Result<Vec<String>, Rejection> {
    let items = v.as_array().ok_or_else(|| invalid("Auth.Scopes"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) if crate::pipeline::verify::is_scope_token(s) => Ok(s.to_owned()),
            _ => Err(invalid(&format!("Auth.Scopes[{i}]"))),
        })
        .collect()
}

/// `ExternalSessionId` / `ExternalSessionType`: forwarded as the plain string,
/// so only visible ASCII and space, at most [`MAX_SESSION_BYTES`].
fn session_value(v: &Value, field: &str) -> Result<HeaderValue, Rejection> {
    match v.as_str() {
        Some(s) if s.len() <= MAX_SESSION_BYTES && s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            HeaderValue::from_str(s).map_err(|_| invalid(field))
        }
        _ => Err(invalid(field)),
    }
}

/// A JSON header value. [`ascii_json`] output is always a valid header value;
/// the error arm only keeps this total.
fn json_header(v: &Value, field: &str) -> Result<HeaderValue, Rejection> {
    HeaderValue::try_from(ascii_json(v)).map_err(|_| invalid(field))
}

/// Applies `customer_info_pii` to already type-checked `CustomerInfo` members.
fn customer_info_pii(
    info: &Map<String, Value>,
    mode: PiiMode,
) -> Result<(Map<String, Value>, usize), Rejection> {
    let mut out = info.clone();
    if mode == PiiMode::Allow {
        return Ok((out, 0));
    }
    let mut redacted = 0;
    for (key, value) in out.iter_mut() {
        let Value::String(s) = value else { continue };
        if !looks_like_pii(s) {
            continue;
        }
        match mode {
            PiiMode::Reject => {
                return Err(Rejection::PiiRejected {
                    field: child_field("CustomerInfo", key),
                })
            }
            PiiMode::Redact => {
                *value = Value::String(REDACTED.to_owned());
                redacted += 1;
            }
            PiiMode::Allow => {}
        }
    }
    Ok((out, redacted))
}

// ---------------------------------------------------------------------------
// PII detectors
// ---------------------------------------------------------------------------

/// Whether `s` contains an e-mail address, a payment card number or a US SSN
/// anywhere in it. Meant to catch accidental PII in analytics fields, not a
/// client determined to smuggle it (digits are ASCII digits only).
pub fn looks_like_pii(s: &str) -> bool {
    contains_email(s) || contains_card_number(s) || contains_ssn(s)
}

/// An e-mail address anywhere in `s`: `local@domain.tld`, where the local part
/// is a run of atext/dot characters with a letter or digit in it, the domain
/// has at least two non-empty labels of letters, digits and `-`, and the last
/// label is at least two letters (or an `xn--` IDN label). Unicode letters
/// count as letters. Trailing dots (end of a sentence) are ignored.
pub fn contains_email(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    chars.iter().enumerate().any(|(at, &c)| {
        if c != '@' {
            return false;
        }
        let local_start = chars[..at]
            .iter()
            .rposition(|&c| !is_local_char(c))
            .map_or(0, |p| p + 1);
        let local = &chars[local_start..at];
        let domain_end = chars[at + 1..]
            .iter()
            .position(|&c| !is_domain_char(c))
            .map_or(chars.len(), |p| at + 1 + p);
        local.iter().any(|c| c.is_alphanumeric()) && is_email_domain(&chars[at + 1..domain_end])
    })
}

fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '.'
}

fn is_email_domain(domain: &[char]) -> bool {
    let end = domain.iter().rposition(|&c| c != '.').map_or(0, |p| p + 1);
    let labels: Vec<&[char]> = domain[..end].split(|&c| c == '.').collect();
    let Some(tld) = labels.last() else {
        return false;
    };
    let idn = tld.len() > 4
        && tld[..4]
            .iter()
            .collect::<String>()
            .eq_ignore_ascii_case("xn--");
    labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && (idn || (tld.len() >= 2 && tld.iter().all(|c| c.is_alphabetic())))
}

/// A payment card number anywhere in `s`: 13–19 digits, written together or
/// in groups separated by single spaces or dashes, passing the Luhn check.
///
/// A run of digit groups (`12 4111 1111 1111 1111`) is searched for any
/// sequence of whole consecutive groups with 13–19 digits in all; a group is
/// never split, so a 20-digit reference number is not read as a card hiding
/// inside it.
pub fn contains_card_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // One run: digits, with single separators between digit groups.
        let mut digits: Vec<u8> = Vec::new();
        let mut group_starts: Vec<usize> = vec![0];
        loop {
            match b.get(i) {
                Some(d) if d.is_ascii_digit() => {
                    digits.push(d - b'0');
                    i += 1;
                }
                Some(b' ' | b'-') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    group_starts.push(digits.len());
                    i += 1;
                }
                _ => break,
            }
        }
        group_starts.push(digits.len());
        let groups = group_starts.len() - 1;
        for first in 0..groups {
            for last in first..groups {
                let (from, to) = (group_starts[first], group_starts[last + 1]);
                let n = to - from;
                if n > 19 {
                    break;
                }
                if n >= 13 && luhn(&digits[from..to]) {
                    return true;
                }
            }
        }
    }
    false
}

/// The Luhn (mod 10) check over digit values 0–9.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            match (i % 2 == 1, d * 2) {
                (false, _) => d,
                (true, twice) if twice > 9 => twice - 9,
                (true, twice) => twice,
            }
        })
        .sum();
    sum % 10 == 0
}

/// A US social security number anywhere in `s`, written `ddd-dd-dddd` (a bare
/// nine-digit number is too common to count) and not part of a longer digit
/// run. Numbers never issued are not SSNs: area 000, 666 or 9xx, group 00,
/// serial 0000.
pub fn contains_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    let digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let value = |from: usize, to: usize| {
        b[from..to]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    (0..b.len().saturating_sub(10)).any(|i| {
        let shape = (0..11).all(|k| match k {
            3 | 6 => b[i + k] == b'-',
            _ => digit_at(i + k),
        });
        if !shape || (i > 0 && digit_at(i - 1)) || digit_at(i + 11) {
            return false;
        }
        let (area, group, serial) = (value(i, i + 3), value(i + 4, i + 6), value(i + 7, i + 11));
        area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
    })
}

// ---------------------------------------------------------------------------
// lwicontexts
// ---------------------------------------------------------------------------

/// Microsoft Omnichannel `lwicontexts` (SPEC §4 `context_claim`): the claim
/// must be a JSON string holding a serialized JSON object (parsed as strictly
/// as a body: no duplicate keys) whose values are all strings, numbers,
/// booleans or null — including members `keys` will drop. Members whose key is
/// not in `keys` (when given) are dropped; the rest become compact ASCII JSON.
///
/// Numbers keep serde_json's reading: an integer beyond 64 bits is forwarded
/// as the nearest float.
#[allow(
    clippy::result_unit_err,
    reason = "the only failure is `invalid_token`; the caller adds the log detail"
)]
pub fn parse_lwicontexts(claim: &Value, keys: Option<&[String]>) -> Result<HeaderValue, ()> {
    let Value::String(text) = claim else {
        return Err(());
    };
    let Ok(Value::Object(members)) = parse_json_body(text.as_bytes()) else {
        return Err(());
    };
    let mut kept = Map::new();
    for (key, value) in members {
        if value.is_array() || value.is_object() {
            return Err(());
        }
        if keys.is_none_or(|keys| keys.contains(&key)) {
            kept.insert(key, value);
        }
    }
    HeaderValue::try_from(ascii_json(&Value::Object(kept))).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ok(body: &str) -> Value {
        parse_json_body(body.as_bytes()).expect("valid body")
    }

    fn err(body: &[u8]) -> BodyError {
        parse_json_body(body).expect_err("invalid body")
    }

    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    fn field_of(r: Result<Context, Rejection>) -> String {
        match r {
            Err(Rejection::InvalidContext { field }) => field,
            other => panic!("expected InvalidContext, got {other:?}"),
        }
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("test header value")
    }

    // --- parse_json_body ---------------------------------------------------

    #[test]
    fn parses_ordinary_json() {
        assert_eq!(
            ok(r#"{"a":[1,-2,1.5,true,null,"x"]}"#),
            json!({"a":[1,-2,1.5,true,null,"x"]})
        );
        assert_eq!(ok(" \n\t{ } \r\n"), json!({}));
        assert_eq!(ok("[]"), json!([]));
        assert_eq!(ok("\"s\""), json!("s"));
        assert_eq!(ok("0"), json!(0));
        assert_eq!(ok("null"), Value::Null);
        assert_eq!(ok("18446744073709551615"), json!(u64::MAX));
        assert_eq!(ok("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(ok(r#""\u00e9\ud83d\ude00""#), json!("é😀"));
        assert_eq!(
            ok(r#"{"k":"\"\\\/\b\f\n\r\t"}"#),
            json!({"k":"\"\\/\u{8}\u{c}\n\r\t"})
        );
    }

    #[test]
    fn syntax_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"{",
            b"{} x",
            b"{}{}",
            b"{'a':1}",
            b"{\"a\":1,}",
            b"[1,]",
            b"NaN",
            b"Infinity",
            b"1e400",
            b"01",
            b"\xef\xbb\xbf{}",   // BOM
            b"\"\xff\"",         // invalid UTF-8 in a string
            b"{\"\xc3\x28\":1}", // invalid UTF-8 in a key
            b"\xff",             // invalid UTF-8 outside strings
            b"\"\\ud800\"",      // lone surrogate escape
            b"\"a\nb\"",         // raw control character in a string
            b"\"\\x41\"",
        ];
        for case in cases {
            assert_eq!(
                err(case),
                BodyError::Syntax,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn depth_limit_is_exact() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let inner = if open == "[" { "" } else { "1" };
            let at = |d: usize| {
                format!(
                    "{}{}{}",
                    open.repeat(d),
                    if d == 0 { "0" } else { inner },
                    close.repeat(d)
                )
            };
            // a depth-d object chain ends in `{"a":1}`: valid only with a value
            let body_ok = if open == "[" {
                nested(MAX_DEPTH, open, close)
            } else {
                at(MAX_DEPTH)
            };
            assert!(
                parse_json_body(body_ok.as_bytes()).is_ok(),
                "{open} at MAX_DEPTH"
            );
            let too_deep = if open == "[" {
                nested(MAX_DEPTH + 1, open, close)
            } else {
                at(MAX_DEPTH + 1)
            };
            assert_eq!(
                err(too_deep.as_bytes()),
                BodyError::TooDeep,
                "{open} at MAX_DEPTH+1"
            );
        }
        // mixed nesting counts both kinds
        let mixed = format!("{}0{}", "[{\"k\":".repeat(16), "}]".repeat(16));
        assert!(parse_json_body(mixed.as_bytes()).is_ok());
        let mixed = format!("[{}0{}]", "[{\"k\":".repeat(16), "}]".repeat(16));
        assert_eq!(err(mixed.as_bytes()), BodyError::TooDeep);
        // siblings do not add up
        let wide = format!("[{}]", vec![nested(MAX_DEPTH - 1, "[", "]"); 100].join(","));
        assert!(parse_json_body(wide.as_bytes()).is_ok());
    }

    #[test]
    fn hostile_depth_never_overflows_the_stack() {
        for n in [MAX_DEPTH + 1, 129, 10_000, 1_000_000] {
            assert_eq!(err(nested(n, "[", "]").as_bytes()), BodyError::TooDeep);
            assert_eq!(
                err("[".repeat(n).as_bytes()),
                BodyError::TooDeep,
                "unterminated"
            );
            assert_eq!(err("{\"a\":".repeat(n).as_bytes()), BodyError::TooDeep);
        }
    }

    #[test]
    fn duplicate_keys_anywhere() {
        assert_eq!(err(br#"{"a":1,"a":1}"#), BodyError::DuplicateKey);
        assert_eq!(
            err(br#"{"Auth":{"Token":"x","Token":"y"}}"#),
            BodyError::DuplicateKey
        );
        assert_eq!(
            err(br#"[{"b":1},{"a":1,"b":2,"a":3}]"#),
            BodyError::DuplicateKey
        );
        // keys compare after unescaping
        assert_eq!(err(br#"{"a":1,"\u0061":2}"#), BodyError::DuplicateKey);
        assert_eq!(err(br#"{"":1,"":2}"#), BodyError::DuplicateKey);
        // detected at the key, before an unparsable value
        assert_eq!(err(br#"{"a":1,"a":"#), BodyError::DuplicateKey);
        // same key in different objects, or differing case, is fine
        assert_eq!(
            ok(r#"{"a":{"a":1},"b":{"a":2},"A":3}"#),
            json!({"a":{"a":1},"b":{"a":2},"A":3})
        );
    }

    #[test]
    fn first_fault_wins() {
        assert_eq!(err(br#"{"a":1,"a":[[[["#), BodyError::DuplicateKey);
        assert_eq!(err(br#"{"a":1 "a":2}"#), BodyError::Syntax);
        let deep_then_dup = format!(r#"{{"a":{},"a":1}}"#, nested(MAX_DEPTH + 1, "[", "]"));
        assert_eq!(err(deep_then_dup.as_bytes()), BodyError::TooDeep);
    }

    #[test]
    fn body_error_displays() {
        for e in [
            BodyError::Syntax,
            BodyError::TooDeep,
            BodyError::DuplicateKey,
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    // --- pointers ------------------------------------------------------------

    #[test]
    fn pointer_lookup() {
        let doc = json!({"Auth":{"Token":"t"},"a/b":1,"m~n":2,"":3,"arr":[10,20],"~1":4});
        assert_eq!(pointer(&doc, ""), Some(&doc));
        assert_eq!(pointer(&doc, "/Auth/Token"), Some(&json!("t")));
        assert_eq!(pointer(&doc, "/a~1b"), Some(&json!(1)));
        assert_eq!(pointer(&doc, "/m~0n"), Some(&json!(2)));
        assert_eq!(pointer(&doc, "/~01"), Some(&json!(4)));
        assert_eq!(pointer(&doc, "/"), Some(&json!(3)));
        assert_eq!(pointer(&doc, "/arr/1"), Some(&json!(20)));
        for missing in [
            "Auth",
            "/auth",
            "/arr/2",
            "/arr/01",
            "/arr/-",
            "/arr/+1",
            "/Auth/Token/x",
            "/nope",
        ] {
            assert_eq!(pointer(&doc, missing), None, "{missing}");
        }
    }

    #[test]
    fn remove_pointer_strips_the_token() {
        let mut doc = json!({"CustomerId":"c","Auth":{"Token":"t","Scopes":["a"]}});
        assert!(remove_pointer(&mut doc, "/Auth/Token"));
        assert_eq!(doc, json!({"CustomerId":"c","Auth":{"Scopes":["a"]}}));
        assert!(!remove_pointer(&mut doc, "/Auth/Token"));
        assert_eq!(doc, json!({"CustomerId":"c","Auth":{"Scopes":["a"]}}));
    }

    #[test]
    fn remove_pointer_edge_cases() {
        let original = json!({"a/b":1,"m~n":2,"":3,"arr":[10,20,30],"s":"x","~1":4});
        let mut doc = original.clone();
        assert!(!remove_pointer(&mut doc, ""), "the root cannot be removed");
        assert!(!remove_pointer(&mut doc, "a/b"), "not a pointer");
        assert!(!remove_pointer(&mut doc, "/s/0"), "through a string");
        assert!(!remove_pointer(&mut doc, "/arr/3"));
        assert!(!remove_pointer(&mut doc, "/arr/01"));
        assert!(!remove_pointer(&mut doc, "/arr/-"));
        assert!(!remove_pointer(&mut doc, "/missing/x"));
        assert_eq!(doc, original);
        assert!(remove_pointer(&mut doc, "/a~1b"));
        assert!(remove_pointer(&mut doc, "/m~0n"));
        assert!(remove_pointer(&mut doc, "/~01"));
        assert!(remove_pointer(&mut doc, "/"));
        assert!(remove_pointer(&mut doc, "/arr/1"));
        assert_eq!(doc, json!({"arr":[10,30],"s":"x"}));
    }

    // --- ascii_json ------------------------------------------------------------

    #[test]
    fn ascii_json_escapes() {
        assert_eq!(
            ascii_json(&json!({"b":"é","a":1})),
            r#"{"a":1,"b":"\u00e9"}"#
        );
        assert_eq!(ascii_json(&json!("😀")), r#""\ud83d\ude00""#);
        assert_eq!(
            ascii_json(&json!({"ключ":"\u{2028}"})),
            r#"{"\u043a\u043b\u044e\u0447":"\u2028"}"#
        );
        assert_eq!(
            ascii_json(&json!("\r\n\0\t\u{8}\u{c}\u{1f}\u{7f}\"\\/")),
            r#""\r\n\u0000\t\b\f\u001f\u007f\"\\/""#
        );
        assert_eq!(
            ascii_json(&json!([null, true, false, -1, 1.5, 1e300, []])),
            "[null,true,false,-1,1.5,1e+300,[]]"
        );
        assert_eq!(ascii_json(&json!({})), "{}");
    }

    #[test]
    fn ascii_json_is_a_header_value_without_cr_lf_nul() {
        let hostile = json!({"k\r\n":"x\r\nSet-Cookie: a=b\0\u{7f}\u{85}\u{feff}"});
        let s = ascii_json(&hostile);
        assert!(!s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0 | 0x7f)));
        assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert!(HeaderValue::from_str(&s).is_ok());
        assert_eq!(parse_json_body(s.as_bytes()), Ok(hostile));
    }

    // --- validate ----------------------------------------------------------------

    fn spec_example() -> Value {
        json!({
          "CustomerId": "b7c1-opaque",
          "Auth": {
            "Token": "eyJhbGciOi",
            "Scopes": ["paybill"],
            "Cookies": {"AuthCookie": "c"},
            "Headers": {"X-Custom-Header": "h"},
            "Body": {"customParam": "b"}
          },
          "CustomerInfo": {"category": "payment", "parent_page": "Pay my Bill"},
          "ExternalSessionId": "j6oAOxCWZh", "ExternalSessionType": "visitID",
          "CompanySubdivision": "divisionId",
          "Segments": ["north america", "usa", "northeast"]
        })
    }

    #[test]
    fn validates_the_spec_example() {
        let c = validate(&spec_example(), PiiMode::Redact).expect("valid");
        assert_eq!(c.requested_scopes, Some(vec!["paybill".to_owned()]));
        assert_eq!(
            c.customer_info,
            Some(hv(r#"{"category":"payment","parent_page":"Pay my Bill"}"#))
        );
        assert_eq!(
            c.segments,
            Some(hv(r#"["north america","usa","northeast"]"#))
        );
        assert_eq!(c.subdivision, Some(hv(r#""divisionId""#)));
        assert_eq!(c.session_id, Some(hv("j6oAOxCWZh")));
        assert_eq!(c.session_type, Some(hv("visitID")));
        assert_eq!(c.pii_redacted, 0);
    }

    #[test]
    fn everything_is_optional() {
        assert_eq!(
            validate(&json!({}), PiiMode::Reject),
            Ok(Context::default())
        );
        assert_eq!(
            validate(&json!({"Auth":{}}), PiiMode::Reject),
            Ok(Context::default())
        );
        assert_eq!(
            validate(
                &json!({"CustomerId": 7, "Other": [{"x": null}], "auth": 1}),
                PiiMode::Reject
            ),
            Ok(Context::default()),
            "unknown members, even lowercase look-alikes, are ignored"
        );
    }

    #[test]
    fn null_members_are_absent() {
        let ctx = json!({
            "Auth": {"Token": null, "Scopes": null, "Cookies": null, "Headers": null, "Body": null},
            "CustomerInfo": null, "ExternalSessionId": null, "ExternalSessionType": null,
            "CompanySubdivision": null, "Segments": null
        });
        assert_eq!(validate(&ctx, PiiMode::Reject), Ok(Context::default()));
        assert_eq!(
            validate(&json!({"Auth": null}), PiiMode::Reject),
            Ok(Context::default())
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (json!([]), "(context)"),
            (json!("ctx"), "(context)"),
            (json!(null), "(context)"),
            (json!({"Auth": "x"}), "Auth"),
            (json!({"Auth": []}), "Auth"),
            (json!({"Auth": {"Token": 1}}), "Auth.Token"),
            (json!({"Auth": {"Token": ["a"]}}), "Auth.Token"),
            (json!({"Auth": {"Scopes": "paybill"}}), "Auth.Scopes"),
            (json!({"Auth": {"Scopes": ["a", 2]}}), "Auth.Scopes[1]"),
            (
                json!({"Auth": {"Scopes": ["a", "b", null]}}),
                "Auth.Scopes[2]",
            ),
            (json!({"Auth": {"Scopes": ["a b"]}}), "Auth.Scopes[0]"),
            (json!({"Auth": {"Scopes": [""]}}), "Auth.Scopes[0]"),
            (
                json!({"Auth": {"Scopes": ["ok", "quo\"te"]}}),
                "Auth.Scopes[1]",
            ),
            (
                json!({"Auth": {"Scopes": ["back\\slash"]}}),
                "Auth.Scopes[0]",
            ),
            (json!({"Auth": {"Scopes": ["é"]}}), "Auth.Scopes[0]"),
            (json!({"Auth": {"Cookies": "c"}}), "Auth.Cookies"),
            (
                json!({"Auth": {"Cookies": {"AuthCookie": 1}}}),
                "Auth.Cookies.AuthCookie",
            ),
            (
                json!({"Auth": {"Headers": {"X-Custom-Header": {}}}}),
                "Auth.Headers.X-Custom-Header",
            ),
            (
                json!({"Auth": {"Body": {"customParam": null}}}),
                "Auth.Body.customParam",
            ),
            (json!({"Auth": {"Body": ["x"]}}), "Auth.Body"),
            (json!({"CustomerInfo": "x"}), "CustomerInfo"),
            (
                json!({"CustomerInfo": {"category": 5}}),
                "CustomerInfo.category",
            ),
            (
                json!({"CustomerInfo": {"a": "ok", "b": true}}),
                "CustomerInfo.b",
            ),
            (json!({"ExternalSessionId": 1}), "ExternalSessionId"),
            (json!({"ExternalSessionType": {}}), "ExternalSessionType"),
            (json!({"CompanySubdivision": 1}), "CompanySubdivision"),
            (json!({"CompanySubdivision": ["a"]}), "CompanySubdivision"),
            (
                json!({"CompanySubdivision": {"region": 1}}),
                "CompanySubdivision.region",
            ),
            (json!({"Segments": "usa"}), "Segments"),
            (json!({"Segments": {"0": "usa"}}), "Segments"),
            (json!({"Segments": ["a", "b", 3]}), "Segments[2]"),
            (json!({"Segments": [null]}), "Segments[0]"),
        ];
        for (ctx, field) in cases {
            assert_eq!(field_of(validate(&ctx, PiiMode::Allow)), field, "{ctx}");
        }
    }

    #[test]
    fn awkward_keys_are_quoted_in_field_names() {
        let long = "k".repeat(100);
        let cases = [
            ("a.b", r#"CustomerInfo["a.b"]"#.to_owned()),
            ("", r#"CustomerInfo[""]"#.to_owned()),
            ("x y", r#"CustomerInfo["x y"]"#.to_owned()),
            ("é\r\n", r#"CustomerInfo["\u00e9\r\n"]"#.to_owned()),
            ("a[0]", r#"CustomerInfo["a[0]"]"#.to_owned()),
            (
                long.as_str(),
                format!(r#"CustomerInfo["{}..."]"#, "k".repeat(64)),
            ),
        ];
        for (key, field) in cases {
            let ctx = json!({ "CustomerInfo": { key: 1 } });
            assert_eq!(field_of(validate(&ctx, PiiMode::Allow)), field);
        }
    }

    #[test]
    fn fields_are_checked_in_a_fixed_order() {
        let ctx = json!({"Segments": [1], "Auth": {"Token": 1, "Scopes": 1}, "CustomerInfo": {"z": 1, "a": 1}});
        assert_eq!(field_of(validate(&ctx, PiiMode::Allow)), "Auth.Token");
        let ctx = json!({"Segments": [1], "CustomerInfo": {"z": 1, "a": 1}});
        assert_eq!(field_of(validate(&ctx, PiiMode::Allow)), "CustomerInfo.a");
    }

    #[test]
    fn session_values_must_be_plain_header_text() {
        for field in ["ExternalSessionId", "ExternalSessionType"] {
            for bad in [
                "a\r\nb",
                "a\nb",
                "a\0b",
                "tab\there",
                "caf\u{e9}",
                "del\u{7f}",
                "\u{85}",
            ] {
                let ctx = json!({ field: bad });
                assert_eq!(field_of(validate(&ctx, PiiMode::Allow)), field, "{bad:?}");
            }
            let longest = "x".repeat(MAX_SESSION_BYTES);
            let c = validate(&json!({ field: longest }), PiiMode::Allow).expect("256 bytes");
            let v = if field == "ExternalSessionId" {
                c.session_id
            } else {
                c.session_type
            };
            assert_eq!(v.map(|h| h.len()), Some(MAX_SESSION_BYTES));
            let too_long = "x".repeat(MAX_SESSION_BYTES + 1);
            assert_eq!(
                field_of(validate(&json!({ field: too_long }), PiiMode::Allow)),
                field
            );
            let c =
                validate(&json!({ field: " a ~!\"{}" }), PiiMode::Allow).expect("visible ASCII");
            let v = if field == "ExternalSessionId" {
                c.session_id
            } else {
                c.session_type
            };
            assert_eq!(v, Some(hv(" a ~!\"{}")));
        }
    }

    #[test]
    fn subdivision_and_segments_forms() {
        let c = validate(
            &json!({"CompanySubdivision": {"region": "nórth", "id": "7"}}),
            PiiMode::Allow,
        )
        .expect("object subdivision");
        assert_eq!(
            c.subdivision,
            Some(hv(r#"{"id":"7","region":"n\u00f3rth"}"#))
        );
        let c =
            validate(&json!({"CompanySubdivision": "a\"b\r\n"}), PiiMode::Allow).expect("string");
        assert_eq!(c.subdivision, Some(hv(r#""a\"b\r\n""#)));
        let c = validate(&json!({"Segments": []}), PiiMode::Allow).expect("empty segments");
        assert_eq!(c.segments, Some(hv("[]")));
        let c = validate(&json!({"CustomerInfo": {}}), PiiMode::Allow).expect("empty info");
        assert_eq!(c.customer_info, Some(hv("{}")));
    }

    #[test]
    fn scopes_keep_order_and_may_be_empty() {
        let c = validate(
            &json!({"Auth": {"Scopes": ["b", "a", "b"]}}),
            PiiMode::Allow,
        )
        .expect("scopes");
        assert_eq!(
            c.requested_scopes,
            Some(vec!["b".into(), "a".into(), "b".into()])
        );
        let c = validate(&json!({"Auth": {"Scopes": []}}), PiiMode::Allow).expect("empty scopes");
        assert_eq!(c.requested_scopes, Some(vec![]));
        let c = validate(&json!({"Auth": {"Scopes": ["a:b/c!#[]~"]}}), PiiMode::Allow)
            .expect("scope chars");
        assert_eq!(c.requested_scopes, Some(vec!["a:b/c!#[]~".into()]));
    }

    #[test]
    fn token_must_be_a_string() {
        assert!(validate(&json!({"Auth": {"Token": ""}}), PiiMode::Allow).is_ok());
        let e = validate(&json!({"Auth": {"Token": 5}}), PiiMode::Allow).expect_err("number");
        assert_eq!(
            e,
            Rejection::InvalidContext {
                field: "Auth.Token".into()
            }
        );
    }

    fn pii_ctx() -> Value {
        json!({"CustomerInfo": {
            "category": "payment",
            "contact": "write to jane.doe@example.com please",
            "note": "card 4111 1111 1111 1111 ok",
            "order": "1234567812345678",
            "tax": "123-45-6789"
        }})
    }

    #[test]
    fn pii_redact() {
        let c = validate(&pii_ctx(), PiiMode::Redact).expect("redacted");
        assert_eq!(c.pii_redacted, 3);
        assert_eq!(
            c.customer_info,
            Some(hv(
                r#"{"category":"payment","contact":"[redacted]","note":"[redacted]","order":"1234567812345678","tax":"[redacted]"}"#
            ))
        );
    }

    #[test]
    fn pii_reject_names_the_first_field() {
        assert_eq!(
            validate(&pii_ctx(), PiiMode::Reject),
            Err(Rejection::PiiRejected {
                field: "CustomerInfo.contact".into()
            })
        );
        let ctx = json!({"CustomerInfo": {"a.b": "x@y.io"}});
        assert_eq!(
            validate(&ctx, PiiMode::Reject),
            Err(Rejection::PiiRejected {
                field: r#"CustomerInfo["a.b"]"#.into()
            })
        );
        let clean = json!({"CustomerInfo": {"category": "payment"}});
        assert!(validate(&clean, PiiMode::Reject).is_ok());
    }

    #[test]
    fn pii_allow() {
        let c = validate(&pii_ctx(), PiiMode::Allow).expect("allowed");
        assert_eq!(c.pii_redacted, 0);
        let info = c.customer_info.expect("info");
        assert!(info
            .to_str()
            .expect("ascii")
            .contains("jane.doe@example.com"));
    }

    #[test]
    fn type_errors_win_over_pii() {
        let ctx = json!({"CustomerInfo": {"a": "x@y.io"}, "Segments": [1]});
        assert_eq!(field_of(validate(&ctx, PiiMode::Reject)), "Segments[0]");
        let ctx = json!({"CustomerInfo": {"a": "x@y.io", "b": 1}});
        assert_eq!(field_of(validate(&ctx, PiiMode::Reject)), "CustomerInfo.b");
    }

    #[test]
    fn only_customer_info_is_scanned() {
        let ctx = json!({
            "ExternalSessionId": "x@y.io",
            "CompanySubdivision": "4111111111111111",
            "Segments": ["123-45-6789"],
            "Auth": {"Body": {"email": "x@y.io"}},
            "CustomerInfo": {"x@y.io": "key is a name, not data"}
        });
        let c = validate(&ctx, PiiMode::Reject).expect("not scanned");
        assert_eq!(c.segments, Some(hv(r#"["123-45-6789"]"#)));
    }

    // --- PII detectors ----------------------------------------------------------

    #[test]
    fn emails() {
        for yes in [
            "a@b.co",
            "jane.doe@example.com",
            "Write to JANE+tag@mail.example.org.",
            "<x_y-z@sub-domain.example.museum>",
            "mailto:someone@example.com?subject=hi",
            "user:pass@host.example.com",
            "jörg@bücher.de",
            "a@b.xn--p1ai",
            "x@@y.com and z@w.org",
        ] {
            assert!(contains_email(yes), "{yes}");
            assert!(looks_like_pii(yes), "{yes}");
        }
        for no in [
            "",
            "@",
            "a@b",
            "a@localhost",
            "@handle on twitter",
            "a@b.c",
            "a@.com",
            "a@b..com",
            "version@1.2.3",
            "5@3.50",
            "...@example.com",
            "a @example.com",
            "a@ example.com",
            "pay my bill",
            "a@b.c0m",
        ] {
            assert!(!contains_email(no), "{no}");
        }
    }

    #[test]
    fn card_numbers() {
        for yes in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111-1111 1111-1111",
            "card 4111 1111 1111 1111 ok",
            "card:4111111111111111.",
            "ref4111111111111111x",
            "3782 822463 10005",       // Amex 15
            "4222222222222",           // Visa 13
            "6011000990139424",        // Discover
            "5555555555554444",        // Mastercard
            "4111 1111 1111 1111 003", // 19 digits passing Luhn
            "12 4111 1111 1111 1111",  // card after a short group
            "4111 1111 1111 1111 12",  // card before a short group
        ] {
            assert!(contains_card_number(yes), "{yes}");
            assert!(looks_like_pii(yes), "{yes}");
        }
        for no in [
            "",
            "1234567812345678", // an order number failing Luhn
            "order 1234 5678 1234 5678",
            "4111111111111112",
            "411111111111",           // 12 digits
            "4111  1111  1111  1111", // double spaces split it
            "4111 - 1111 - 1111 - 1111",
            "4111_1111_1111_1111",
            "4111.1111.1111.1111",
            "41111111111111111111111", // one 23-digit group is no card
            "---- ",
            "4",
        ] {
            assert!(!contains_card_number(no), "{no}");
        }
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn ssns() {
        for yes in [
            "123-45-6789",
            "my ssn is 123-45-6789.",
            "ssn:078-05-1120",
            "x123-45-6789y",
            "899-99-9999",
            "665-01-0001",
        ] {
            assert!(contains_ssn(yes), "{yes}");
            assert!(looks_like_pii(yes), "{yes}");
        }
        for no in [
            "",
            "123456789",
            "123 45 6789",
            "123-456-789",
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1123-45-6789",
            "123-45-67890",
            "123-45-678",
            "12-345-6789",
        ] {
            assert!(!contains_ssn(no), "{no}");
        }
    }

    #[test]
    fn ordinary_analytics_values_are_not_pii() {
        for s in [
            "payment",
            "Pay my Bill",
            "north america",
            "2024-01-15",
            "+1 415-555-0123",
            "10000",
            "order #A-1234567",
            "https://www.example.com/bill?id=42",
        ] {
            assert!(!looks_like_pii(s), "{s}");
        }
    }

    #[test]
    fn detectors_handle_body_sized_hostile_strings() {
        // Shapes that would be slow for a backtracking scanner; a body is at
        // most `max_body_bytes` (64 KiB by default).
        let n = 64 * 1024;
        for s in [
            "1 ".repeat(n / 2),
            "1-".repeat(n / 2),
            "9".repeat(n),
            "a@".repeat(n / 2),
            format!("{}@", "a".repeat(n)),
            format!("a@{}", "b.".repeat(n / 2)),
            "123-45-".repeat(n / 7),
            "@.".repeat(n / 2),
        ] {
            let _ = looks_like_pii(&s);
        }
        assert!(looks_like_pii(&format!(
            "{}4111111111111111",
            "x ".repeat(n / 2)
        )));
    }

    // --- lwicontexts ---------------------------------------------------------------

    const SAMPLE: &str = r#"{"msdyn_cartvalue":"10000", "msdyn_isvip":"false"}"#;

    #[test]
    fn lwicontexts_sample() {
        let v = parse_lwicontexts(&json!(SAMPLE), None).expect("sample");
        assert_eq!(
            v,
            hv(r#"{"msdyn_cartvalue":"10000","msdyn_isvip":"false"}"#)
        );
        let keys = vec!["msdyn_isvip".to_owned(), "absent".to_owned()];
        let v = parse_lwicontexts(&json!(SAMPLE), Some(&keys)).expect("filtered");
        assert_eq!(v, hv(r#"{"msdyn_isvip":"false"}"#));
        let v = parse_lwicontexts(&json!(SAMPLE), Some(&[])).expect("all dropped");
        assert_eq!(v, hv("{}"));
    }

    #[test]
    fn lwicontexts_primitives() {
        let claim = json!(r#"{"n":1.5,"i":-2,"b":true,"z":null,"s":"caf\u00e9\r\n"}"#);
        let v = parse_lwicontexts(&claim, None).expect("primitives");
        assert_eq!(
            v,
            hv(r#"{"b":true,"i":-2,"n":1.5,"s":"caf\u00e9\r\n","z":null}"#)
        );
        let v = parse_lwicontexts(&json!("{}"), None).expect("empty");
        assert_eq!(v, hv("{}"));
    }

    #[test]
    fn lwicontexts_refusals() {
        let keys = vec!["a".to_owned()];
        for claim in [
            json!({"msdyn_isvip": "false"}), // not serialized
            json!(null),
            json!(1),
            json!(["{}"]),
            json!(""),
            json!("not json"),
            json!("[]"),
            json!("\"{}\""),
            json!("1"),
            json!(r#"{"a":"x"} trailing"#),
            json!(r#"{"a":{"b":1}}"#),
            json!(r#"{"a":[1]}"#),
            json!(r#"{"a":"x","b":{}}"#), // nested even under a dropped key
            json!(r#"{"a":"x","a":"y"}"#),
            json!(r#"{"a":1e999}"#),
        ] {
            assert_eq!(parse_lwicontexts(&claim, Some(&keys)), Err(()), "{claim}");
            assert_eq!(parse_lwicontexts(&claim, None), Err(()), "{claim}");
        }
    }

    // --- properties ----------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON whose strings are printable ASCII, where no escaping choice differs.
    fn arb_printable_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[ -~]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Objects shaped like a context object, with random member values.
    fn arb_context() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "Auth",
            "CustomerInfo",
            "ExternalSessionId",
            "ExternalSessionType",
            "CompanySubdivision",
            "Segments",
            "CustomerId",
        ]);
        let auth_names =
            prop::sample::select(vec!["Token", "Scopes", "Cookies", "Headers", "Body"]);
        let auth = prop::collection::btree_map(auth_names, arb_json(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
        let member = prop_oneof![arb_json(), auth];
        prop::collection::btree_map(names, member, 0..7)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    /// JSON-ish soup: the characters JSON is made of, to reach deep paths.
    fn json_soup() -> impl Strategy<Value = String> {
        r#"[\[\]{}",:\\ a-c0-9eE.+\-ntrufls\u{e9}]{0,200}"#
    }

    fn card_like() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(0u8..10, 12..19),
            prop::sample::select(vec!["", " ", "-"]),
        )
            .prop_map(|(mut digits, sep)| {
                // choose the check digit that makes the number pass Luhn
                let check = (0..10u8)
                    .find(|&c| {
                        let mut all = digits.clone();
                        all.push(c);
                        luhn(&all)
                    })
                    .unwrap_or(0);
                digits.push(check);
                digits
                    .chunks(4)
                    .map(|g| g.iter().map(|d| char::from(b'0' + d)).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(sep)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_json_body(&bytes);
        }

        #[test]
        fn parse_agrees_with_serde_json(soup in json_soup()) {
            if let Ok(v) = parse_json_body(soup.as_bytes()) {
                let reference: Value = serde_json::from_str(&soup).expect("serde_json accepts it too");
                prop_assert_eq!(v, reference);
            }
        }

        #[test]
        fn depth_is_bounded(n in 1usize..3000, objects in any::<bool>()) {
            let body = if objects {
                format!("{}0{}", "{\"a\":".repeat(n), "}".repeat(n))
            } else {
                format!("{}{}", "[".repeat(n), "]".repeat(n))
            };
            let result = parse_json_body(body.as_bytes());
            if n <= MAX_DEPTH {
                prop_assert!(result.is_ok());
            } else {
                prop_assert_eq!(result, Err(BodyError::TooDeep));
            }
        }

        #[test]
        fn ascii_json_round_trips_as_a_header(v in arb_json()) {
            let s = ascii_json(&v);
            prop_assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)), "{}", s);
            prop_assert!(HeaderValue::from_str(&s).is_ok());
            // Same document as serde_json's own output, read by the same
            // parser (serde_json's default float reading may be 1 ULP off, so
            // comparing with `v` itself would test serde_json, not us).
            let reference = serde_json::to_string(&v).expect("serializes");
            let back: Value = serde_json::from_str(&s).expect("valid JSON");
            prop_assert_eq!(&back, &serde_json::from_str::<Value>(&reference).expect("valid JSON"));
            // strict parsing reads it back too: arb_json is shallow with unique keys
            prop_assert_eq!(parse_json_body(s.as_bytes()), Ok(back));
        }

        #[test]
        fn ascii_json_is_serde_json_for_printable_text(v in arb_printable_json()) {
            prop_assert_eq!(ascii_json(&v), serde_json::to_string(&v).expect("serializes"));
        }

        #[test]
        fn validate_never_panics(v in arb_json(), mode in prop::sample::select(vec![PiiMode::Redact, PiiMode::Reject, PiiMode::Allow])) {
            let _ = validate(&v, mode);
        }

        #[test]
        fn validated_context_headers_are_safe(
            v in arb_context(),
            mode in prop::sample::select(vec![PiiMode::Redact, PiiMode::Reject, PiiMode::Allow]),
        ) {
            match validate(&v, mode) {
                Ok(c) => {
                    for h in [c.customer_info, c.segments, c.subdivision, c.session_id, c.session_type].into_iter().flatten() {
                        prop_assert!(h.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
                    }
                    if mode != PiiMode::Redact {
                        prop_assert_eq!(c.pii_redacted, 0);
                    }
                }
                Err(Rejection::InvalidContext { field }) => prop_assert!(!field.is_empty()),
                Err(Rejection::PiiRejected { field }) => {
                    prop_assert_eq!(mode, PiiMode::Reject);
                    prop_assert!(field.starts_with("CustomerInfo"));
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn redaction_leaves_no_pii(info in prop::collection::btree_map("[a-z]{1,8}", any::<String>(), 0..6)) {
            let ctx = json!({ "CustomerInfo": info });
            let c = validate(&ctx, PiiMode::Redact).expect("strings only");
            let header = c.customer_info.expect("present");
            let back = parse_json_body(header.as_bytes()).expect("JSON");
            let Value::Object(m) = back else { panic!("not an object") };
            for v in m.values() {
                let s = v.as_str().expect("string");
                prop_assert!(!looks_like_pii(s));
            }
        }

        #[test]
        fn detectors_never_panic(s in any::<String>(), soup in "[0-9 \\-@.a-z]{0,64}") {
            let _ = looks_like_pii(&s);
            let _ = looks_like_pii(&soup);
        }

        #[test]
        fn cards_are_found_in_text(card in card_like(), before in "[a-z :]{0,10}", after in "[a-z .]{0,10}") {
            let text = format!("{before}{card}{after}");
            prop_assert!(contains_card_number(&text), "{}", text);
        }

        #[test]
        fn valid_ssns_are_found(area in 1u32..900, group in 1u32..100, serial in 1u32..10000, before in "[a-z :]{0,6}") {
            prop_assume!(area != 666);
            let text = format!("{before}{area:03}-{group:02}-{serial:04}.");
            prop_assert!(contains_ssn(&text), "{}", text);
        }

        #[test]
        fn emails_are_found(local in "[a-z0-9._+]{0,10}[a-z0-9]", domain in "[a-z0-9-]{1,10}", tld in "[a-z]{2,6}") {
            let text = format!("contact: {local}@{domain}.{tld}, thanks");
            prop_assert!(contains_email(&text), "{}", text);
        }

        #[test]
        fn remove_agrees_with_pointer(
            v in arb_json(),
            tokens in prop::collection::vec(prop_oneof![
                Just("0".to_owned()), Just("1".to_owned()), Just("".to_owned()),
                Just("~0".to_owned()), Just("~1".to_owned()), Just("01".to_owned()),
                "[a-c~/]{0,3}",
            ], 1..4),
        ) {
            let ptr: String = tokens.iter().map(|t| format!("/{t}")).collect();
            let mut doc = v.clone();
            let found = pointer(&v, &ptr).is_some();
            prop_assert_eq!(remove_pointer(&mut doc, &ptr), found);
            if !found {
                prop_assert_eq!(doc, v);
            }
        }

        #[test]
        fn remove_pointer_removes_every_object_member(v in arb_json()) {
            if let Value::Object(m) = &v {
                for key in m.keys() {
                    let ptr = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
                    prop_assert_eq!(pointer(&v, &ptr), m.get(key));
                    let mut doc = v.clone();
                    prop_assert!(remove_pointer(&mut doc, &ptr));
                    prop_assert_eq!(pointer(&doc, &ptr), None);
                }
            }
        }

        #[test]
        fn lwicontexts_never_panics(s in any::<String>(), soup in json_soup(), v in arb_json()) {
            let _ = parse_lwicontexts(&Value::String(s), None);
            let _ = parse_lwicontexts(&Value::String(soup), None);
            let _ = parse_lwicontexts(&v, None);
        }

        #[test]
        fn lwicontexts_keeps_primitive_objects(
            m in prop::collection::btree_map(any::<String>(), prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ], 0..8),
        ) {
            let obj = Value::Object(m.into_iter().collect());
            let claim = Value::String(serde_json::to_string(&obj).expect("serializes"));
            let header = parse_lwicontexts(&claim, None).expect("primitives");
            let back: Value = serde_json::from_slice(header.as_bytes()).expect("JSON");
            prop_assert_eq!(back, obj);
        }
    }
}
