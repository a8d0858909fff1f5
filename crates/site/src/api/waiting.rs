//! `GET /api/v1/connectors/{cid}/remote-sync/waiting`: the points of a paired connector that
//! wait for a resource the Target does not have, per resource, and on which site they wait
//! (the Target: a Source asks it live). Creating the resource there applies them.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value as Json_;

use super::render::waiting_json;
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::{self, connector_id};
use crate::state::AppState;

pub async fn waiting(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let c = ops::connectors::paired(&state, &cid, "peer to wait for").await?;
    let (site, waiting) = ops::peer::waiting(&state, &c).await?;
    Ok(Json(waiting_json(&site, &waiting)))
}
