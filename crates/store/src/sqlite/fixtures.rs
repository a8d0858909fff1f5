//! Names and keys the store's unit tests share.

use proto::model::{ConnectorId, DeviceState, Format, Identity, ResourceName, Value};

use super::SqliteStore;
use crate::{ConnectorKeys, NewConnector, NewDevice, NewResource, Order, Peer, RangeQuery, Store};

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

/// The tests' Source: the connector [`cid`] holding `temp` (remote-synced) and `mode` (not),
/// devices `dev1` and `dev2`, and, `paired`, a pairing with site-b that queued the two
/// devices' snapshots (seqs 1 and 2).
pub async fn source_plant(store: &SqliteStore, paired: bool) {
    create_plant(store).await;
    for (n, sync) in [("temp", true), ("mode", false)] {
        store
            .create_resource(
                &cid(),
                NewResource {
                    name: name(n),
                    format: Format::Number,
                    unit: None,
                    settable: false,
                    remote_sync: sync,
                    created_at: 1,
                },
            )
            .await
            .unwrap();
    }
    for (i, d) in ["dev1", "dev2"].into_iter().enumerate() {
        store
            .create_device(
                &cid(),
                NewDevice {
                    identity: id(d),
                    tags: Default::default(),
                    permissions: vec![],
                    state: DeviceState::Provisioned,
                    token: [i as u8 + 1; 32],
                    created_at: 1,
                },
                &admin(),
            )
            .await
            .unwrap();
    }
    if paired {
        store.open_pairing(&cid(), "CODE", i64::MAX).await.unwrap();
        let peer = Peer {
            site: "site-b".into(),
            connector_id: ConnectorId::parse("abcdefghijklmn").unwrap(),
        };
        store
            .complete_pairing(&cid(), peer, keys(), 2)
            .await
            .unwrap();
    }
}

/// The points of series (`dev`, `res`) of connector [`cid`], in time order (up to 100).
pub async fn series(store: &SqliteStore, dev: &str, res: &str) -> Vec<(i64, Value)> {
    let q = RangeQuery {
        since: 0,
        until: i64::MAX,
        after: None,
        limit: 100,
        order: Order::Asc,
    };
    store
        .points(&cid(), &id(dev), &name(res), q)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.t, p.v))
        .collect()
}
