//! Errors the proxy returns to clients, as OpenAI-style JSON.
//!
//! One enum maps to the HTTP status, a stable `error_type` string (used in
//! the body's `type` and `code` and in metric labels) and, for retryable
//! refusals, a `Retry-After` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::limits::Throttled;

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("the model name `{model}` belongs to the older InferenceService {owner}; the claim in namespace `{namespace}` gets no traffic")]
    ModelNameConflict {
        model: String,
        namespace: String,
        owner: String,
    },
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("the model `{model}` has no serving endpoint right now")]
    NoEndpoint {
        model: String,
        retry_after_secs: u64,
    },
    #[error("tenant `{tenant}` is over its limit ({})", throttle.reason.as_str())]
    TenantThrottled { tenant: String, throttle: Throttled },
    #[error("the router is at its limit ({})", reason.as_str())]
    Overloaded {
        retry_after_secs: u64,
        reason: crate::limits::ThrottleReason,
    },
    #[error("upstream failed before responding: {reason}")]
    UpstreamUnavailable {
        reason: &'static str,
        retry_after_secs: u64,
    },
    #[error("upstream did not respond within the first-byte timeout")]
    UpstreamTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoRoute { .. } | Self::UnknownModel(_) => StatusCode::NOT_FOUND,
            Self::ModelNameConflict { .. } => StatusCode::CONFLICT,
            Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NoEndpoint { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TenantThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable reason.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request_error",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::NoRoute { .. } => "not_found",
            Self::UnknownModel(_) => "model_not_found",
            Self::ModelNameConflict { .. } => "model_name_conflict",
            Self::BodyUnreadable(_) => "invalid_request_error",
            Self::BodyTimeout(_) => "request_timeout",
            Self::NoEndpoint { .. } => "no_endpoint",
            Self::TenantThrottled { .. } => "rate_limit_exceeded",
            Self::Overloaded { .. } => "overloaded",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::NoEndpoint {
                retry_after_secs, ..
            }
            | Self::Overloaded {
                retry_after_secs, ..
            }
            | Self::UpstreamUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::TenantThrottled { throttle, .. } => Some(throttle.retry_after_secs),
            _ => None,
        }
    }
}

/// The OpenAI error body.
pub fn error_body(message: &str, error_type: &str) -> String {
    serde_json::json!({
        "error": { "message": message, "type": error_type, "param": null, "code": error_type }
    })
    .to_string()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = error_body(&self.to_string(), self.error_type());
        let mut resp = (self.status(), body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            Self::BodyTooLarge { .. } | Self::BodyTimeout(_) | Self::BodyUnreadable(_)
        ) {
            // The unread rest of the body makes the connection unusable.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ThrottleReason;

    #[test]
    fn unknown_model_is_404_and_no_endpoint_is_503_with_retry_after() {
        let r = ProxyError::UnknownModel("x".into()).into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r = ProxyError::NoEndpoint {
            model: "x".into(),
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }

    #[test]
    fn tenant_throttle_is_429_with_its_retry_after() {
        let r = ProxyError::TenantThrottled {
            tenant: "t".into(),
            throttle: Throttled {
                reason: ThrottleReason::TenantRate,
                retry_after_secs: 3,
            },
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }

    #[test]
    fn body_is_openai_shaped() {
        let v: serde_json::Value = serde_json::from_str(&error_body("m", "t")).expect("json");
        assert_eq!(v["error"]["type"], "t");
        assert_eq!(v["error"]["message"], "m");
    }
}
