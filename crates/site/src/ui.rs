//! The web UI of UI.md. Placeholder until the UI lands.

use axum::Router;

use crate::state::AppState;

pub fn routes(_state: AppState) -> Router {
    Router::new()
}
