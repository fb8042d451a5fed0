//! `Rejection`: every early end of a request, mapped in one exhaustive `match`
//! to a status, headers and the JSON body of SPEC §7.
//!
//! The client sees only the fixed `message` of each variant; the detail that
//! explains *why* (which check failed) travels separately to the access log
//! and never contains a token, cookie or secret.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

/// Why a request was refused. One flat enum; see [`Rejection::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed request or ambiguous path.
    BadRequest,
    /// A context member of the wrong type; the field's dotted name.
    InvalidContext { field: String },
    /// Two credential sources carry different tokens.
    ConflictingCredentials,
    /// `auth = "required"` and no token.
    MissingToken,
    /// Any verification failure but expiry.
    InvalidToken,
    /// `exp` passed beyond the leeway.
    TokenExpired,
    /// A required or requested scope is not granted.
    InsufficientScope { required: Vec<String> },
    /// `match_claims` failed.
    IdentityMismatch,
    /// `customer_info_pii = "reject"` and a value looks like PII.
    PiiRejected { field: String },
    /// No route matches the path.
    NotFound,
    /// A route matches the path but not the method.
    MethodNotAllowed { allow: String },
    /// Body over `max_body_bytes` on a reading route.
    PayloadTooLarge,
    /// Over the route's rate limit.
    RateLimited { retry_after_secs: u64 },
    /// Request head over `max_header_bytes`.
    HeaderTooLarge,
    /// The upstream refused or reset the connection.
    UpstreamUnavailable,
    /// An issuer has never loaded keys, or introspection is unreachable.
    KeysUnavailable,
    /// The upstream did not answer within `request_timeout`.
    UpstreamTimeout,
}

impl Rejection {
    /// The HTTP status of this rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest
            | Rejection::InvalidContext { .. }
            | Rejection::ConflictingCredentials => StatusCode::BAD_REQUEST,
            Rejection::MissingToken | Rejection::InvalidToken | Rejection::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::InsufficientScope { .. }
            | Rejection::IdentityMismatch
            | Rejection::PiiRejected { .. } => StatusCode::FORBIDDEN,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Rejection::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` code of the JSON body (also the `error` label in metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::InvalidContext { .. } => "invalid_context",
            Rejection::ConflictingCredentials => "conflicting_credentials",
            Rejection::MissingToken => "missing_token",
            Rejection::InvalidToken => "invalid_token",
            Rejection::TokenExpired => "token_expired",
            Rejection::InsufficientScope { .. } => "insufficient_scope",
            Rejection::IdentityMismatch => "identity_mismatch",
            Rejection::PiiRejected { .. } => "pii_rejected",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::PayloadTooLarge => "payload_too_large",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::KeysUnavailable => "keys_unavailable",
            Rejection::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The fixed, human-readable message. Never carries request data.
    pub fn message(&self) -> &'static str {
        match self {
            Rejection::BadRequest => "the request is malformed or its path is ambiguous",
            Rejection::InvalidContext { .. } => "a context member has the wrong type",
            Rejection::ConflictingCredentials => "the request carries more than one credential",
            Rejection::MissingToken => "this route requires a bearer token",
            Rejection::InvalidToken => "the token could not be verified",
            Rejection::TokenExpired => "the token has expired; refresh it and retry",
            Rejection::InsufficientScope { .. } => "the token does not grant the required scopes",
            Rejection::IdentityMismatch => {
                "the identity declared by the request does not match the token"
            }
            Rejection::PiiRejected { .. } => "customer info contains personal data",
            Rejection::NotFound => "no route matches this path",
            Rejection::MethodNotAllowed { .. } => "this route does not accept this method",
            Rejection::PayloadTooLarge => "the request body is too large",
            Rejection::RateLimited { .. } => "too many requests; slow down",
            Rejection::HeaderTooLarge => "the request head is too large",
            Rejection::UpstreamUnavailable => "the upstream service is unavailable",
            Rejection::KeysUnavailable => "token verification keys are not available yet",
            Rejection::UpstreamTimeout => "the upstream service did not answer in time",
        }
    }

    /// Builds the client response: status, JSON body, and the headers the
    /// SPEC requires. `token_presented` selects the RFC 6750 `error=` form.
    pub fn to_response(&self, request_id: &str, token_presented: bool) -> Response<Bytes> {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(self.code()));
        body.insert("message".into(), Value::from(self.message()));
        body.insert("request_id".into(), Value::from(request_id));
        let mut www_authenticate: Option<String> = None;
        let mut extra_header: Option<(http::HeaderName, String)> = None;
        match self {
            Rejection::InvalidContext { field } | Rejection::PiiRejected { field } => {
                body.insert("field".into(), Value::from(field.as_str()));
            }
            Rejection::TokenExpired => {
                body.insert("needs_refresh".into(), Value::Bool(true));
                www_authenticate = Some(bearer_error("invalid_token", "the token has expired"));
            }
            Rejection::InvalidToken => {
                www_authenticate = Some(if token_presented {
                    bearer_error("invalid_token", "the token could not be verified")
                } else {
                    BEARER_REALM.to_owned()
                });
            }
            Rejection::MissingToken => www_authenticate = Some(BEARER_REALM.to_owned()),
            Rejection::InsufficientScope { required } => {
                body.insert("required_scopes".into(), json!(required));
                www_authenticate = Some(format!(
                    "{BEARER_REALM}, error=\"insufficient_scope\", scope=\"{}\"",
                    quoted_safe(&required.join(" "))
                ));
            }
            Rejection::MethodNotAllowed { allow } => {
                extra_header = Some((ALLOW, allow.clone()));
            }
            Rejection::RateLimited { retry_after_secs } => {
                extra_header = Some((RETRY_AFTER, retry_after_secs.max(&1).to_string()));
            }
            Rejection::BadRequest
            | Rejection::ConflictingCredentials
            | Rejection::IdentityMismatch
            | Rejection::NotFound
            | Rejection::PayloadTooLarge
            | Rejection::HeaderTooLarge
            | Rejection::UpstreamUnavailable
            | Rejection::KeysUnavailable
            | Rejection::UpstreamTimeout => {}
        }
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut response = Response::new(Bytes::from(bytes));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if let Some(value) = www_authenticate.and_then(|v| HeaderValue::try_from(v).ok()) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        if let Some((name, value)) = extra_header {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
        if let Ok(value) = HeaderValue::try_from(request_id) {
            headers.insert(crate::pipeline::X_REQUEST_ID.clone(), value);
        }
        response
    }
}

const BEARER_REALM: &str = "Bearer realm=\"authgate\"";

fn bearer_error(code: &str, description: &str) -> String {
    format!("{BEARER_REALM}, error=\"{code}\", error_description=\"{description}\"")
}

/// Scope names come from configuration or a verified token; keep only
/// characters that are legal inside an RFC 6750 quoted `scope` value.
fn quoted_safe(s: &str) -> String {
    s.chars()
        .filter(|c| matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E' | ' '))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Rejection> {
        vec![
            Rejection::BadRequest,
            Rejection::InvalidContext {
                field: "Segments[2]".into(),
            },
            Rejection::ConflictingCredentials,
            Rejection::MissingToken,
            Rejection::InvalidToken,
            Rejection::TokenExpired,
            Rejection::InsufficientScope {
                required: vec!["paybill".into()],
            },
            Rejection::IdentityMismatch,
            Rejection::PiiRejected {
                field: "CustomerInfo.email".into(),
            },
            Rejection::NotFound,
            Rejection::MethodNotAllowed {
                allow: "GET, POST".into(),
            },
            Rejection::PayloadTooLarge,
            Rejection::RateLimited {
                retry_after_secs: 2,
            },
            Rejection::HeaderTooLarge,
            Rejection::UpstreamUnavailable,
            Rejection::KeysUnavailable,
            Rejection::UpstreamTimeout,
        ]
    }

    #[test]
    fn every_rejection_maps_to_the_spec_table() {
        let expected = [
            (400, "bad_request"),
            (400, "invalid_context"),
            (400, "conflicting_credentials"),
            (401, "missing_token"),
            (401, "invalid_token"),
            (401, "token_expired"),
            (403, "insufficient_scope"),
            (403, "identity_mismatch"),
            (403, "pii_rejected"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (413, "payload_too_large"),
            (429, "rate_limited"),
            (431, "header_too_large"),
            (502, "upstream_unavailable"),
            (503, "keys_unavailable"),
            (504, "upstream_timeout"),
        ];
        for (rejection, (status, code)) in all().into_iter().zip(expected) {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            assert_eq!(rejection.code(), code);
        }
    }

    async fn body_of(rejection: &Rejection) -> (http::response::Parts, Value) {
        let response = rejection.to_response("req-1", true);
        let (parts, body) = response.into_parts();
        (parts, serde_json::from_slice(&body).expect("json body"))
    }

    #[tokio::test]
    async fn bodies_carry_code_request_id_and_extras() {
        for rejection in all() {
            let (parts, body) = body_of(&rejection).await;
            assert_eq!(body["error"], rejection.code());
            assert_eq!(body["request_id"], "req-1");
            assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
            assert_eq!(parts.headers["x-request-id"], "req-1");
        }
        let (parts, body) = body_of(&Rejection::TokenExpired).await;
        assert_eq!(body["needs_refresh"], true);
        assert!(parts.headers[WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .contains("error=\"invalid_token\""));
        let (parts, body) = body_of(&Rejection::InsufficientScope {
            required: vec!["a".into(), "b".into()],
        })
        .await;
        assert_eq!(body["required_scopes"], json!(["a", "b"]));
        assert_eq!(
            parts.headers[WWW_AUTHENTICATE],
            "Bearer realm=\"authgate\", error=\"insufficient_scope\", scope=\"a b\""
        );
        let (parts, _) = body_of(&Rejection::MethodNotAllowed {
            allow: "GET".into(),
        })
        .await;
        assert_eq!(parts.headers[ALLOW], "GET");
        let (parts, _) = body_of(&Rejection::RateLimited {
            retry_after_secs: 3,
        })
        .await;
        assert_eq!(parts.headers[RETRY_AFTER], "3");
        let (_, body) = body_of(&Rejection::InvalidContext {
            field: "Segments[2]".into(),
        })
        .await;
        assert_eq!(body["field"], "Segments[2]");
    }

    #[tokio::test]
    async fn missing_token_has_no_error_code_in_challenge() {
        let response = Rejection::MissingToken.to_response("r", false);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"authgate\""
        );
    }
}
