//! The integration tests of `proto::sync`, as one test binary: the seeded protocol
//! simulation (layer 2 of docs/style.md) and the codec measurement. They use only the public
//! driver API, as the site's sync driver will.

mod codec_bench;
mod sim;
