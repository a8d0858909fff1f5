//! `/api/v1/hub…`: the hub link as an operator or a script sees it.
//!
//! `POST /api/v1/hub/ping {"site": NAME}` sends a request through the hub to the built-in echo
//! service of site NAME and answers `{"site", "rtt_ms"}` when it comes back: proof that both
//! sites are connected and the hub relays between them. 404 `not_found` when the hub has no
//! site NAME; 503 `peer_offline` when NAME (or this site) is not connected, or when the echo
//! does not come back in time.
//!
//! Deliberately absent: any way to send arbitrary payloads to other sites from HTTP.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiJson;
use crate::auth::User;
use crate::error::ApiError;
use crate::link::LinkError;
use crate::state::AppState;

/// How long a ping waits for the echo.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingBody {
    pub site: String,
}

pub async fn ping(
    State(state): State<AppState>,
    _: User,
    ApiJson(body): ApiJson<PingBody>,
) -> Result<Json<Value>, ApiError> {
    if !proto::wire::is_valid_name(&body.site) {
        return Err(ApiError::InvalidValue(format!(
            "{:?} is not a valid site name",
            body.site
        )));
    }
    match state.link.ping(&body.site, PING_TIMEOUT).await {
        Ok(rtt) => Ok(Json(json!({
            "site": body.site,
            "rtt_ms": rtt.as_secs_f64() * 1000.0,
        }))),
        Err(e) => Err(link_error(e)),
    }
}

/// How a failed call over the link reaches an API client.
pub fn link_error(e: LinkError) -> ApiError {
    match e {
        LinkError::Disabled => {
            ApiError::PeerOffline("this site runs without a hub (start it with --hub)".into())
        }
        LinkError::UnknownSite { .. } => ApiError::NotFound(e.to_string()),
        LinkError::NotPaired { .. } => ApiError::Conflict(e.to_string()),
        LinkError::NotConnected(_)
        | LinkError::PeerOffline { .. }
        | LinkError::Timeout { .. }
        | LinkError::Failed { .. } => ApiError::PeerOffline(e.to_string()),
        LinkError::TooLarge { .. } | LinkError::BadAddress(_) => {
            ApiError::InvalidValue(e.to_string())
        }
        LinkError::Config(_) => {
            tracing::error!(error = %e, "hub link misconfigured");
            ApiError::Internal
        }
    }
}
