//! End-to-end tests: the real `west` binary as separate processes on loopback, driven through
//! the public contract of docs/api.md. One test binary for the whole crate (see docs/style.md).

mod alarms;
mod audit;
mod backfill;
mod bench_nats;
mod budget;
mod cluster;
mod device_sync;
mod export;
mod frames;
mod hub;
mod idle;
mod keep_points;
mod lanes;
mod live;
mod lookup;
mod observability;
mod pairing;
mod quickstart;
mod recovery;
mod restarts;
mod security_files;
mod security_hub;
mod security_peer;
mod security_site;
mod self_heal;
mod site_api;
mod sync;
mod ui;
mod ui_alarms;
mod ui_backfill;
mod ui_device_list;
mod ui_device_sync;
mod ui_lookup;
mod ui_remote_sync;
mod util;
