//! `/api/v1/hub…`: the hub link as an operator or a script sees it.
//!
//! `POST /api/v1/hub/ping {"site": NAME}` sends a request through the hub to the built-in echo
//! service of site NAME and answers `{"site", "rtt_ms"}` when it comes back: proof that both
//! sites are connected and the hub relays between them. 404 `not_found` when the hub has no
//! site NAME; 503 `peer_offline` when NAME (or this site) is not connected, or when the echo
//! does not come back in time.
//!
//! Deliberately absent: any way to send arbitrary payloads to other sites from HTTP.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::ApiJson;
use crate::auth::User;
use crate::error::ApiError;
use crate::ops;
use crate::state::AppState;

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
    let rtt = ops::peer::ping_site(&state, &body.site).await?;
    Ok(Json(json!({
        "site": body.site,
        "rtt_ms": rtt.as_secs_f64() * 1000.0,
    })))
}
