//! A criterion-free measurement of the batch codec: prints wire bytes per point and
//! encode/decode points per second for 1,000 devices reporting drifting sensor values.
//! It asserts only that every batch decodes to as many records as it encoded, never a time
//! or a size: numbers depend on the machine and the build profile. For the figures quoted
//! in `docs/sync.md` run it optimised:
//!
//! ```text
//! cargo test --release -p west-proto --test sync codec -- --nocapture
//! ```

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use west_proto::model::{Identity, ResourceName, Value};
use west_proto::sync::codec::{Decoder, Encoder};
use west_proto::sync::{Message, Point, Record, message};

const DEVICES: usize = 1_000;

/// Round-robin reports of `DEVICES` sensors, one per second each, with values that drift by
/// a few hundredths. `jitter_us` spreads each device's timestamp inside its second;
/// `decimals` rounds values to 0.01 (as a sensor reports) or keeps full f64 noise.
fn workload(rounds: usize, jitter_us: i64, decimals: bool) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(7);
    let ids: Vec<Identity> = (0..DEVICES)
        .map(|i| Identity::parse(&format!("sensor-{i:06}")).expect("valid identity"))
        .collect();
    let resource = ResourceName::parse("temperature").expect("valid name");
    let mut level: Vec<f64> = (0..DEVICES).map(|_| rng.random_range(15.0..30.0)).collect();
    let t0: i64 = 1_790_000_000_000_000;
    let mut out = Vec::with_capacity(rounds * DEVICES);
    for round in 0..rounds as i64 {
        for (d, id) in ids.iter().enumerate() {
            level[d] += rng.random_range(-0.05..0.05);
            let v = if decimals {
                (level[d] * 100.0).round() / 100.0
            } else {
                level[d]
            };
            let jitter = if jitter_us > 0 {
                rng.random_range(0..jitter_us)
            } else {
                0
            };
            out.push(Record::Point(Point {
                device: id.clone(),
                resource: resource.clone(),
                t: t0 + round * 1_000_000 + jitter,
                value: Value::Number(v),
            }));
        }
    }
    out
}

fn measure(label: &str, records: &[Record], batch: usize) {
    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let batches: Vec<&[Record]> = records.chunks(batch).collect();
    let started = Instant::now();
    let payloads: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| enc.encode(b).expect("encodes"))
        .collect();
    let enc_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (p, b) in payloads.iter().zip(&batches) {
        assert_eq!(dec.decode(p).expect("decodes").len(), b.len());
    }
    let dec_s = started.elapsed().as_secs_f64();
    // Wire bytes: the whole sync message (version, header, payload), before the channel.
    let wire: usize = payloads
        .iter()
        .zip(&batches)
        .map(|(p, b)| {
            let m = Message::Batch {
                session: u64::MAX / 3,
                first_seq: 1_000_000,
                last_seq: 1_000_000 + b.len() as u64 - 1,
                head: 2_000_000,
                payload: p.clone(),
            };
            message::encode(&m).expect("fits").len()
        })
        .sum();
    let n = records.len() as f64;
    println!(
        "codec {label:<44} batch {batch:>5}: {:>5.2} wire bytes/point, encode {:>6.2} M points/s, \
         decode {:>6.2} M points/s",
        wire as f64 / n,
        n / enc_s / 1e6,
        n / dec_s / 1e6,
    );
}

#[test]
fn codec_bytes_per_point_and_throughput() {
    let profile = if cfg!(debug_assertions) {
        "debug build: throughput is not representative, use --release"
    } else {
        "release build"
    };
    println!("codec measurement, {DEVICES} devices, {profile}");
    let rounds = if cfg!(debug_assertions) { 10 } else { 1_000 };
    let sensor = workload(rounds, 0, true);
    let jitter = workload(rounds, 20_000, true);
    let noisy = workload(rounds, 20_000, false);
    measure("0.01-step values, 1 s period", &sensor, 1_000);
    measure("0.01-step values, 1 s period", &sensor, 4_096);
    measure("0.01-step values, 1 s ± 20 ms jitter", &jitter, 1_000);
    measure("0.01-step values, 1 s ± 20 ms jitter", &jitter, 4_096);
    measure("full-precision floats (XOR), ± 20 ms jitter", &noisy, 1_000);
    measure("full-precision floats (XOR), ± 20 ms jitter", &noisy, 4_096);

    // For comparison: the same records as plain postcard, then zstd level 1.
    let naive: usize = jitter
        .chunks(1_000)
        .map(|b| {
            let raw = postcard::to_allocvec(b).expect("serialises");
            zstd::bulk::compress(&raw, 1).expect("compresses").len()
        })
        .sum();
    println!(
        "codec naive postcard + zstd, 0.01-step values, jitter, batch 1000: {:.2} bytes/point",
        naive as f64 / jitter.len() as f64
    );
}
