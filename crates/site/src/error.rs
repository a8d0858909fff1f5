//! The one error type of the HTTP API: each kind maps to a status and the stable `error` code
//! of API.md. Internal details go to the log, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::model::ModelError;
use serde_json::json;
use store::StoreError;

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
    #[error("the site could not complete the request; the site's log says why")]
    Internal,
}

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
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case code of API.md.
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
            ApiError::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code(), "message": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        ApiError::InvalidValue(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConnectorNotFound(_)
            | StoreError::DeviceNotFound(_)
            | StoreError::ResourceNotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::ResourceExists(_)
            | StoreError::DeviceExists(_)
            | StoreError::UserExists(_)
            | StoreError::SyncState { .. }
            | StoreError::SyncCursor { .. } => ApiError::Conflict(e.to_string()),
            StoreError::DeviceLocked(_) => ApiError::Forbidden(e.to_string()),
            StoreError::NotSettable(_) | StoreError::Invalid(_) => {
                ApiError::InvalidValue(e.to_string())
            }
            StoreError::Backend { .. } | StoreError::Closed => {
                tracing::error!(error = %e, "storage error");
                ApiError::Internal
            }
        }
    }
}
