//! Names and keys the store's unit tests share.

use proto::model::{ConnectorId, Identity, ResourceName};

use crate::ConnectorKeys;

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
