//! `GET …/data/export`: a connector's data as CSV, streamed. The work and its bounds are
//! `ops::export`'s; `Body::from_stream` reads the next chunk only when the client has taken
//! the last, so a slow client slows the export rather than growing memory.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::extract::QueryPairs;
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::connector_id;
use crate::ops::export::{self, ExportQuery};
use crate::state::AppState;

/// `GET /api/v1/connectors/{cid}/data/export?resource=&since=&until=&device=`: every point
/// of `resource` in `[since, until)` as CSV, of one device or of all, streamed.
pub async fn export(
    State(state): State<AppState>,
    user: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    let cid = connector_id(&cid)?;
    let resource = q
        .get("resource")
        .ok_or_else(|| ApiError::invalid_query("resource is required: ?resource=NAME".into()))?;
    let resource = proto::model::ResourceName::parse(resource)
        .map_err(|e| ApiError::invalid_query(format!("resource: {e}")))?;
    let device = q
        .get("device")
        .map(|d| {
            proto::model::Identity::parse(d)
                .map_err(|e| ApiError::invalid_query(format!("device: {e}")))
        })
        .transpose()?;
    let since = q.number("since", 0, 0..=i64::MAX)?;
    let until = q.number("until", i64::MAX, 0..=i64::MAX)?;
    let name = format!(
        "{cid}-{resource}{}.csv",
        device.as_ref().map(|d| format!("-{d}")).unwrap_or_default()
    );
    let query = ExportQuery {
        resource,
        device,
        since,
        until,
    };
    let stream = export::csv(&state, &cid, query, &user.name).await?;
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other))),
    )
        .into_response())
}
