//! One error enum for the HTTP boundary. Each variant maps to an HTTP status
//! and to a stable `type` string used both in the OpenAI-style body
//! `{"error":{"message","type","param","code"}}` and in metrics. 4xx means
//! the client's request is at fault; 5xx means this replica is (see
//! docs/engine-status-codes.md). Refusals carry `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admission::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("the model `{0}` does not exist on this server")]
    ModelNotFound(String),
    #[error("{0}")]
    ContextLength(String),
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("{0}")]
    Refused(Refusal, u64),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ContextLength(_)
            | ApiError::RequestTooLarge(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Refused(Refusal::TenantLimit, _) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Refused(..) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error type string.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request_error",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::ContextLength(_) => "context_length_exceeded",
            ApiError::RequestTooLarge(_) | ApiError::BodyTooLarge(_) => "request_too_large",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Refused(r, _) => r.as_str(),
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::ContextLength(_) => Some("prompt"),
            ApiError::RequestTooLarge(_) => Some("max_tokens"),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": status.as_u16(),
            }
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::Refused(_, retry_after) = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
