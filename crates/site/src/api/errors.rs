//! How the domain's refusals and the store's failures reach an API client: each
//! `ops::Error` kind is one `ApiError` kind (the same code), and a store error goes through
//! `ops::Error` so that the API and the domain never disagree about one.
//!
//! Here rather than beside `ApiError`, so that `error` (which `auth` uses) stays below
//! `ops`.

use store::StoreError;

use crate::error::ApiError;
use crate::ops;

impl From<ops::Error> for ApiError {
    fn from(e: ops::Error) -> Self {
        match e {
            ops::Error::Invalid(m) => ApiError::InvalidValue(m),
            ops::Error::InvalidQuery(m) => ApiError::InvalidQuery(m),
            ops::Error::NotFound(m) => ApiError::NotFound(m),
            ops::Error::Conflict(m) => ApiError::Conflict(m),
            ops::Error::Forbidden(m) => ApiError::Forbidden(m),
            ops::Error::Unauthorized(m) => ApiError::Unauthorized(m),
            ops::Error::PeerOffline(m) => ApiError::PeerOffline(m),
            ops::Error::PairingExpired(m) => ApiError::PairingExpired(m),
            ops::Error::PairingCodeWrong(m) => ApiError::PairingCodeWrong(m),
            ops::Error::StorageFull => ApiError::StorageFull,
            ops::Error::TooManyAttempts(d) => ApiError::TooManyAttempts(d),
            ops::Error::Busy => ApiError::Busy,
            ops::Error::Internal => ApiError::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ops::Error::from(e).into()
    }
}
