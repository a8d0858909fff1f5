//! The one error type of the HTTP API: each kind maps to a status and the stable `error` code
//! of docs/api.md ("Errors"). Internal details go to the log, never to the client. The
//! domain's refusals (`ops::Error`) map one to one (`api::errors`); the API adds its own for
//! bodies and queries it cannot read.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::model::ModelError;
use serde_json::json;

/// An API failure as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    PeerOffline(String),
    #[error("{0}")]
    PairingExpired(String),
    #[error("{0}")]
    PairingCodeWrong(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("the site's disk is full; nothing of this request was stored; try again later")]
    StorageFull,
    #[error("too many failed sign-ins from this address or for this user; try again in {} s", ceil_secs(*.0))]
    TooManyAttempts(std::time::Duration),
    #[error("the site is busy checking other sign-ins; try again in a second")]
    Busy,
    #[error("{0}")]
    CrossSite(&'static str),
    #[error("the site could not complete the request; the site's log says why")]
    Internal,
}

/// What a client is told to wait before retrying a write refused for a full disk.
pub const STORAGE_FULL_RETRY_AFTER_SECS: u64 = 10;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidValue(_) | ApiError::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PeerOffline(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PairingExpired(_) => StatusCode::GONE,
            ApiError::PairingCodeWrong(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::CrossSite(_) => StatusCode::FORBIDDEN,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case code of docs/api.md.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidValue(_) => "invalid_value",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::PeerOffline(_) => "peer_offline",
            ApiError::PairingExpired(_) => "pairing_expired",
            ApiError::PairingCodeWrong(_) => "pairing_code_wrong",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::StorageFull => "storage_full",
            ApiError::TooManyAttempts(_) => "too_many_attempts",
            ApiError::Busy => "busy",
            ApiError::CrossSite(_) => "cross_site_request",
            ApiError::Internal => "internal",
        }
    }

    /// The `Retry-After` of an answer that asks the client to come back later, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooManyAttempts(d) => Some(ceil_secs(*d)),
            ApiError::StorageFull => Some(STORAGE_FULL_RETRY_AFTER_SECS),
            ApiError::Busy => Some(1),
            _ => None,
        }
    }
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code(), "message": self.to_string() });
        let mut resp = (self.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        ApiError::InvalidValue(e.to_string())
    }
}
