//! What the API reads from a request: bodies (refused with `payload_too_large` over the
//! body limit), JSON bodies (`invalid_json` for bytes that are not JSON, `invalid_value` for
//! JSON of the wrong shape) and query strings whose keys may repeat.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body as bytes, refused with `payload_too_large` over the body limit.
pub struct ApiBytes(pub Bytes);

impl FromRequest<AppState> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge {
                        limit: state.body_limit,
                    }
                } else {
                    ApiError::InvalidJson(format!("could not read the request body: {e}"))
                }
            })
    }
}

/// A JSON body, refused with docs/api.md's codes: `invalid_json` for bytes that are not JSON,
/// `invalid_value` for JSON of the wrong shape, `payload_too_large` over the body limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // serde stops at the first byte that does not fit `T` (`{not json` for a list is
    // "invalid type: map"), and a value of the wrong shape can end in what serde calls a
    // syntax error (a struct read from a longer array: "trailing characters"). So any error
    // is checked once more as plain JSON, on the error path only: a body that is not JSON at
    // all is `invalid_json` whatever `T` is, and JSON never is (found by the ingest_json
    // fuzz target: `[[2,{},{}]]` for a list of points).
    serde_json::from_slice(bytes).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => ApiError::InvalidJson(format!("the body is not valid JSON: {syntax}")),
            Ok(_) => ApiError::invalid(format!("the body does not fit this call: {e}")),
        }
    })
}

/// The raw query string as ordered pairs, so that a key may repeat (`tag=a:1&tag=b:2`).
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(QueryPairs)
            .map_err(|e| ApiError::invalid_query(format!("the query string is malformed: {e}")))
    }
}

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric parameter, `default` when absent, refused when malformed or outside `range`.
    pub fn number(
        &self,
        key: &str,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_query(format!(
                        "{key} must be a whole number from {} to {}, not {v:?}",
                        range.start(),
                        range.end()
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: Option<i64>,
        b: Option<i64>,
    }

    #[test]
    fn json_of_the_wrong_shape_is_not_called_invalid_json() {
        // A struct read from an array one element too long: serde's "trailing characters".
        let shape = parse_json::<Vec<Two>>(b"[[2,3,4]]").unwrap_err();
        assert!(!matches!(shape, ApiError::InvalidJson(_)), "{shape:?}");
        assert!(matches!(
            parse_json::<Vec<Two>>(b"[[2,3"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(parse_json::<Vec<Two>>(b"[[2,3]]").is_ok());
    }
}
