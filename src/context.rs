//! TEMPORARY STUB (the lead's placeholder so the crate compiles) — helper-3 replaces this whole file.
use serde_json::Value;
pub const MAX_DEPTH: usize = 32;
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    Syntax,
    TooDeep,
    DuplicateKey,
}
pub fn parse_json_body(bytes: &[u8]) -> Result<Value, BodyError> {
    serde_json::from_slice(bytes).map_err(|_| BodyError::Syntax)
}
pub fn pointer<'a>(doc: &'a Value, ptr: &str) -> Option<&'a Value> {
    doc.pointer(ptr)
}
pub fn remove_pointer(_doc: &mut Value, _ptr: &str) -> bool {
    false
}
pub fn ascii_json(v: &Value) -> String {
    v.to_string()
}
#[derive(Debug, Default)]
pub struct Context {
    pub requested_scopes: Option<Vec<String>>,
    pub token: Option<String>,
    pub customer_info: Option<http::HeaderValue>,
    pub segments: Option<http::HeaderValue>,
    pub subdivision: Option<http::HeaderValue>,
    pub session_id: Option<http::HeaderValue>,
    pub session_type: Option<http::HeaderValue>,
    pub pii_redacted: usize,
}
pub fn validate(
    _ctx: &Value,
    _pii: crate::config::PiiMode,
) -> Result<Context, crate::error::Rejection> {
    Ok(Context::default())
}
pub fn parse_lwicontexts(
    _claim: &Value,
    _keys: Option<&[String]>,
) -> Result<http::HeaderValue, ()> {
    Err(())
}
