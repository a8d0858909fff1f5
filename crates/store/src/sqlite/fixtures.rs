//! Names and keys the store's unit tests share.

use proto::model::{ConnectorId, Identity, ResourceName};

use super::SqliteStore;
use crate::{ConnectorKeys, NewConnector, Store};

pub fn cid() -> ConnectorId {
    ConnectorId::parse("09iolmnn8090ol").unwrap()
}

pub fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

pub fn name(s: &str) -> ResourceName {
    ResourceName::parse(s).unwrap()
}

pub fn keys() -> ConnectorKeys {
    ConnectorKeys {
        static_private: [1; 32],
        static_public: [2; 32],
        peer_static_public: [3; 32],
    }
}

/// Creates the connector [`cid`] ("plant") that the tests' resources and devices belong to.
pub async fn create_plant(store: &SqliteStore) {
    store
        .create_connector(NewConnector {
            id: cid(),
            name: "plant".into(),
            description: String::new(),
            created_at: 1,
        })
        .await
        .unwrap();
}

/// The author of the tests' local device changes.
pub fn admin() -> crate::Actor {
    crate::Actor::User("admin".into())
}
