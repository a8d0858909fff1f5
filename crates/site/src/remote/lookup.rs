//! Live lookup of the peer's devices (SPEC §5): requests and answers over the encrypted
//! peer session.
//!
//! Not built yet: requests are ignored.

use proto::model::ConnectorId;

use super::peer::PeerHandle;
use crate::state::AppState;

/// Handles a lookup message from the peer (the service byte included).
pub async fn on_message(_state: &AppState, _cid: &ConnectorId, _handle: &PeerHandle, _msg: &[u8]) {}
