use actix_web::http::{header, StatusCode};
use actix_web::HttpMessage;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

/// The registry of every error code the HTTP API returns: its name and its status.
/// These names are a contract (`spec.md`): add, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    TenantNotFound,
    NotFound,
    MethodNotAllowed,
    TenantSuspended,
    /// An offline move is copying the tenant: writes wait for it (503, Retry-After).
    TenantMoving,
    QuotaExceeded,
    RateLimited,
    PayloadTooLarge,
    HeadersTooLarge,
    InvalidRequest,
    UnprocessableRequest,
    TenantUnavailable,
    /// A resource the request needs (a database server) is down or full (admin API).
    Unavailable,
    /// The request conflicts with the current state (admin API: a slug taken with other options).
    Conflict,
    NotReady,
    /// A `/v1/sql` result past `router.sql_max_result_bytes`.
    ResultTooLarge,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TenantNotFound => "tenant_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TenantSuspended => "tenant_suspended",
            Self::TenantMoving => "tenant_moving",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::InvalidRequest | Self::UnprocessableRequest => "invalid_request",
            Self::TenantUnavailable => "tenant_unavailable",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::NotReady => "not_ready",
            Self::ResultTooLarge => "result_too_large",
            Self::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TenantNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TenantSuspended => StatusCode::LOCKED,
            Self::QuotaExceeded | Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::UnprocessableRequest | Self::ResultTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TenantUnavailable | Self::TenantMoving | Self::NotReady | Self::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Conflict => StatusCode::CONFLICT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as the API shows it: `{"error": {"code", "message"}}`. The message is
/// written for the caller; internal causes are logged where the error is made, never sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for `Retry-After` (rate limits, unavailable tenants).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// An internal failure: the cause is logged here, the caller sees a fixed text.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error; it has been logged")
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'static str,
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(Body {
            error: Inner {
                code: self.code.as_str(),
                message: &self.message,
            },
        })
    }
}

/// Unknown routes answer in the same shape as every other error.
pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    req.extensions_mut().insert(crate::edge::Unrouted);
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// Malformed or oversized JSON bodies: 413 or 400/422, in the error shape, without serde's internals.
pub(crate) fn json_config(max_body: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(max_body)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let api = match &err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {max_body} bytes"),
                ),
                E::ContentType => ApiError::new(
                    ErrorCode::InvalidRequest,
                    "send the body as JSON with Content-Type: application/json",
                ),
                E::Deserialize(e) if e.is_data() => ApiError::new(
                    ErrorCode::UnprocessableRequest,
                    format!(
                        "the JSON body does not have the expected fields: {}",
                        data_error(e)
                    ),
                ),
                _ => ApiError::new(
                    ErrorCode::InvalidRequest,
                    "the request body is not valid JSON",
                ),
            };
            api.into()
        })
}

pub(crate) fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("invalid query string: {}", first_line(&err.to_string())),
        )
        .into()
    })
}

pub(crate) fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err, req| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no resource at {}", req.path()),
        )
        .into()
    })
}

/// Refuses text that PostgreSQL cannot store in `text` or `jsonb`: a NUL character.
/// Checked before any database work; the 400 names `field`.
pub(crate) fn storable_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(nul_in(field));
    }
    Ok(())
}

/// [`storable_text`] for an optional field.
pub(crate) fn storable_opt(field: &str, value: Option<&str>) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| storable_text(field, v))
}

/// [`storable_text`] for every string and every key of a JSON value, at any depth; the
/// 400 names the place (`output.a[2]`, or `a key of output.a`).
pub(crate) fn storable_json(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    match nul_path(value) {
        None => Ok(()),
        Some((path, false)) => Err(nul_in(&format!("{field}{path}"))),
        Some((path, true)) => Err(nul_in(&format!("a key of {field}{path}"))),
    }
}

/// Where a NUL is in `value`: the path below it (`.a[2]`), and whether it is in a key
/// of the object there. Paths are made only for the one that is found.
fn nul_path(value: &serde_json::Value) -> Option<(String, bool)> {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0').then(|| (String::new(), false)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v).map(|(path, key)| (format!("[{i}]{path}"), key))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some((String::new(), true));
            }
            nul_path(v).map(|(path, key)| (format!(".{k}{path}"), key))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn nul_in(place: &str) -> ApiError {
    let place: String = place.chars().take(120).collect();
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!("{place} contains a NUL character (\\u0000), which cannot be stored"),
    )
}

/// serde's message for a data error ("missing field `title` at line 1 column 2"),
/// which names the caller's own fields and nothing internal.
fn data_error(e: &serde_json::Error) -> String {
    first_line(&e.to_string())
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn every_code_has_the_contract_status() {
        for (code, status, name) in [
            (ErrorCode::Unauthorized, 401, "unauthorized"),
            (ErrorCode::Forbidden, 403, "forbidden"),
            (ErrorCode::TenantNotFound, 404, "tenant_not_found"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::TenantSuspended, 423, "tenant_suspended"),
            (ErrorCode::TenantMoving, 503, "tenant_moving"),
            (ErrorCode::QuotaExceeded, 429, "quota_exceeded"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorCode::InvalidRequest, 400, "invalid_request"),
            (ErrorCode::UnprocessableRequest, 422, "invalid_request"),
            (ErrorCode::TenantUnavailable, 503, "tenant_unavailable"),
            (ErrorCode::ResultTooLarge, 422, "result_too_large"),
            (ErrorCode::Internal, 500, "internal"),
        ] {
            assert_eq!(code.status().as_u16(), status, "{name}");
            assert_eq!(code.as_str(), name);
        }
    }

    #[test]
    fn responses_have_the_error_shape_and_retry_after() {
        let response = ApiError::new(ErrorCode::RateLimited, "slow down")
            .retry_after(7)
            .error_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers().get("retry-after").unwrap(), "7");
        let body = response.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "rate_limited", "message": "slow down"}})
        );
    }

    #[test]
    fn nul_anywhere_in_text_or_json_is_refused_naming_the_place() {
        use serde_json::json;
        assert!(storable_text("title", "a\u{85}b").is_ok());
        assert!(storable_opt("plan", None).is_ok());
        let e = storable_text("title", "a\0b").unwrap_err();
        assert_eq!(
            (e.code, e.code.status().as_u16()),
            (ErrorCode::InvalidRequest, 400)
        );
        assert!(
            e.message.starts_with("title contains a NUL"),
            "{}",
            e.message
        );
        for (value, place) in [
            (json!({"a": {"b": [1, "x\0"]}}), "output.a.b[1] contains"),
            (json!({"a": [{"k\0": 1}]}), "a key of output.a[0] contains"),
            (json!({"\u{85}\0;": ""}), "a key of output contains"),
            (json!("\0"), "output contains"),
        ] {
            let e = storable_json("output", &value).unwrap_err();
            assert!(e.message.starts_with(place), "{}", e.message);
        }
        assert!(storable_json("input", &json!({"a": [null, true, 1.5, "\u{1}"]})).is_ok());
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = ApiError::internal(&"relation \"x\" does not exist");
        assert!(!e.message.contains("relation"));
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
