//! The site's two error types. [`Error`] is the domain's refusal (`ops::Error`): each kind
//! has the stable `error` code of docs/api.md ("Errors"), which the API answers, the UI
//! shows and the peer protocol carries. [`ApiError`] is what an API client sees: a domain
//! refusal, or one of the API's own for requests it cannot read (bodies that are not JSON
//! or too large, cross-site requests). Internal details go to the log, never to a client.
//!
//! Both live here, at the bottom of the site, rather than `Error` in `ops`: `auth` and
//! `guard`, which `ops` sits above, answer with them too.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::model::ModelError;
use serde_json::json;
use store::StoreError;

/// Why an operation was refused. Each kind has a stable snake_case [`code`](Error::code),
/// the one the API answers and the peer protocol carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An input is not valid (`invalid_value`).
    #[error("{0}")]
    Invalid(String),
    /// A list query is not valid (`invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    NotFound(String),
    /// The operation does not fit the current state (a paired connector cannot be deleted…).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// Wrong username or password.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The peer site (or the hub) cannot be reached now.
    #[error("{0}")]
    PeerOffline(String),
    #[error("{0}")]
    PairingExpired(String),
    #[error("{0}")]
    PairingCodeWrong(String),
    /// A backfill asks for history the Source no longer holds (`range_not_held`).
    #[error("{0}")]
    RangeNotHeld(String),
    /// The disk is full: nothing was stored; the same request may succeed once space
    /// frees (`storage_full`).
    #[error("the site's disk is full; nothing of this request was stored; try again later")]
    StorageFull,
    /// Too many failed sign-ins from this address or for this user: try again after this.
    #[error("too many failed sign-ins from this address or for this user; try again in {} s", ceil_secs(*.0))]
    TooManyAttempts(std::time::Duration),
    /// Too many sign-ins are being checked at once.
    #[error("the site is busy checking other sign-ins; try again in a second")]
    Busy,
    /// The caller already runs as many of this long task (an export) as it may (`busy`).
    #[error("{0}")]
    TooManyRunning(String),
    /// Something failed inside the site; the log says what.
    #[error("the site could not complete the request; the site's log says why")]
    Internal,
}

impl Error {
    /// The stable code of this kind of refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_value",
            Error::InvalidQuery(_) => "invalid_query",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Forbidden(_) => "forbidden",
            Error::Unauthorized(_) => "unauthorized",
            Error::PeerOffline(_) => "peer_offline",
            Error::PairingExpired(_) => "pairing_expired",
            Error::RangeNotHeld(_) => "range_not_held",
            Error::PairingCodeWrong(_) => "pairing_code_wrong",
            Error::StorageFull => "storage_full",
            Error::TooManyAttempts(_) => "too_many_attempts",
            Error::Busy | Error::TooManyRunning(_) => "busy",
            Error::Internal => "internal",
        }
    }
}

/// An API failure as the client sees it: a refusal of the domain, or of the request itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal of the domain, with its own code.
    #[error(transparent)]
    Domain(#[from] Error),
    /// The body is not JSON (`invalid_json`).
    #[error("{0}")]
    InvalidJson(String),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A state-changing request from another site (`cross_site_request`).
    #[error("{0}")]
    CrossSite(&'static str),
}

/// What a client is told to wait before retrying a write refused for a full disk.
pub const STORAGE_FULL_RETRY_AFTER_SECS: u64 = 10;

impl ApiError {
    /// `invalid_value`.
    pub fn invalid(message: String) -> Self {
        Error::Invalid(message).into()
    }

    /// `invalid_query`.
    pub fn invalid_query(message: String) -> Self {
        Error::InvalidQuery(message).into()
    }

    /// `not_found`.
    pub fn not_found(message: String) -> Self {
        Error::NotFound(message).into()
    }

    /// `forbidden`.
    pub fn forbidden(message: String) -> Self {
        Error::Forbidden(message).into()
    }

    /// `unauthorized`.
    pub fn unauthorized(message: &'static str) -> Self {
        Error::Unauthorized(message).into()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Domain(e) => match e {
                Error::Invalid(_) | Error::InvalidQuery(_) => StatusCode::BAD_REQUEST,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Forbidden(_) | Error::PairingCodeWrong(_) => StatusCode::FORBIDDEN,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Error::PeerOffline(_) | Error::Busy | Error::TooManyRunning(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Error::PairingExpired(_) | Error::RangeNotHeld(_) => StatusCode::GONE,
                Error::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
                Error::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
                Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::CrossSite(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The stable snake_case code of docs/api.md.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Domain(e) => e.code(),
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::CrossSite(_) => "cross_site_request",
        }
    }

    /// The `Retry-After` of an answer that asks the client to come back later, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Domain(Error::TooManyAttempts(d)) => Some(ceil_secs(*d)),
            ApiError::Domain(Error::StorageFull) => Some(STORAGE_FULL_RETRY_AFTER_SECS),
            ApiError::Domain(Error::Busy) => Some(1),
            ApiError::Domain(Error::TooManyRunning(_)) => Some(5),
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

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        Error::from(e).into()
    }
}

/// A store failure reaches a client as the domain's refusal (`ops` maps and logs it), so
/// that the API and the domain never disagree about one.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}
