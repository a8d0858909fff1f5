//! The batch payload codec: a run of [`Record`]s in, compact bytes out, and back. Beside it,
//! a plain layout for a store's own rows of points ([`encode_plain`], [`decode_plain`]):
//! unsorted and uncompressed, cheap to write on a commit path.
//!
//! Layout of the payload (all integers LEB128 varints; `zz` is zigzag; the whole body is then
//! compressed as one zstd level-1 frame that records its content size):
//!
//! ```text
//! body     := version(u8 = 1) n_segments segment*
//! segment  := 0 points | 1 devices            -- runs of consecutive records of one kind,
//!                                               in sequence order
//! devices  := len postcard(Vec<DeviceRecord>)
//! points   := n_devices (shared_prefix suffix_len suffix)*   -- identities sorted, front-coded
//!             n_resources (len name)*
//!             n_series series_header*                     -- series sorted by (device, resource)
//!             len times  len values                        -- two column streams
//! series_header := device_index_delta resource_index n_points encoding [k]
//! times    := zz(base_t) then per series: (t0 - base_t), then per point zz(Δ of Δt)
//! values   := per series, by encoding:
//!               0 decimal k: zz(v0·10^k), then zz(Δ)        -- exact decimals, e.g. 21.53
//!               1 xor float: bits(v0) ^ bits(prev) as varint  -- any other finite f64
//!               2 integer:   zz(v0), then zz(Δ)
//!               3 boolean:   one byte each
//!               4 string / 5 json: len bytes each
//!               6 mixed:     tag(0..=4) value, each
//! ```
//!
//! Within a points segment the records are grouped per series and sorted by timestamp
//! (stably, so that two writes of one timestamp keep their order); segment boundaries keep
//! device changes and points in stream order, so a device change is applied before the points
//! that follow it and after those that precede it. The decoder returns records in exactly
//! that *apply order*.
//!
//! Invariants: [`decode`] never panics and never allocates more than a small multiple of its
//! input or [`MAX_BODY_LEN`]; it rejects trailing bytes, unknown tags, non-finite numbers,
//! invalid names and timestamps outside the model's range.

use super::device::DeviceRecord;
use super::record::{Point, Record};
use crate::model::{Identity, MAX_TEXT_VALUE, MAX_TIMESTAMP, ResourceName, Value};

/// Version byte at the start of every body.
const CODEC_VERSION: u8 = 1;
/// The largest body (before compression) that [`encode`] produces and [`decode`] accepts.
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;
/// zstd level: docs/limits.md measured level 3 to gain under 5 % on 1k-point batches.
const ZSTD_LEVEL: i32 = 1;
/// Largest power of ten tried by the decimal encoding.
const MAX_DECIMAL_EXP: u8 = 9;

const SEG_POINTS: u8 = 0;
const SEG_DEVICES: u8 = 1;

const ENC_DECIMAL: u8 = 0;
const ENC_XOR: u8 = 1;
const ENC_INTEGER: u8 = 2;
const ENC_BOOLEAN: u8 = 3;
const ENC_STRING: u8 = 4;
const ENC_JSON: u8 = 5;
const ENC_MIXED: u8 = 6;

/// Why a batch payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("batch body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("zstd failed: {0}")]
    Compression(String),
    #[error("payload is not a zstd frame with a declared size of at most {MAX_BODY_LEN} bytes")]
    BadFrame,
    #[error("batch codec version {0} is not supported")]
    Version(u8),
    #[error("batch body ends early while reading {0}")]
    Truncated(&'static str),
    #[error("batch body has an invalid {0}")]
    Invalid(&'static str),
    #[error("batch body has {0} bytes after its end")]
    TrailingBytes(usize),
}

/// A point as the encoder reads it. [`Encoder::encode_points`] takes any such view: a
/// store encoding its own rows (names that are row ids, or a block's placeholder) then
/// builds no [`Point`], whose two owned names cost more than encoding the point does.
/// The names must be valid [`Identity`] and [`ResourceName`] text, as a [`Point`]'s are:
/// [`decode`] refuses a batch with any other.
pub trait PointView {
    fn device(&self) -> &str;
    fn resource(&self) -> &str;
    fn t(&self) -> i64;
    fn value(&self) -> &Value;

    /// A cheap estimate of the point's size before compression, used to cut batches and
    /// rows ([`Record::estimated_size`]).
    fn estimated_size(&self) -> usize {
        let v = match self.value() {
            Value::String(s) | Value::Json(s) => s.len() + 2,
            _ => 8,
        };
        self.device().len() + self.resource().len() + 8 + v
    }
}

impl PointView for Point {
    fn device(&self) -> &str {
        self.device.as_str()
    }
    fn resource(&self) -> &str {
        self.resource.as_str()
    }
    fn t(&self) -> i64 {
        self.t
    }
    fn value(&self) -> &Value {
        &self.value
    }
}

impl<P: PointView + ?Sized> PointView for &P {
    fn device(&self) -> &str {
        (**self).device()
    }
    fn resource(&self) -> &str {
        (**self).resource()
    }
    fn t(&self) -> i64 {
        (**self).t()
    }
    fn value(&self) -> &Value {
        (**self).value()
    }
}

/// Encodes batches, reusing its zstd context and buffers from one batch to the next (a
/// fresh zstd context costs more than compressing a small batch).
#[derive(Default)]
pub struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes records (in sequence order) into a compressed payload.
    pub fn encode(&mut self, records: &[Record]) -> Result<Vec<u8>, CodecError> {
        let body = &mut self.body;
        body.clear();
        body.push(CODEC_VERSION);
        let segments = split_segments(records);
        put_varint(body, segments.len() as u64);
        for seg in segments {
            match seg {
                Segment::Points(points) => {
                    body.push(SEG_POINTS);
                    encode_points(body, &points);
                }
                Segment::Devices(devices) => {
                    body.push(SEG_DEVICES);
                    let bytes = postcard::to_allocvec(&devices)
                        .map_err(|_| CodecError::Invalid("device record"))?;
                    put_varint(body, bytes.len() as u64);
                    body.extend_from_slice(&bytes);
                }
            }
        }
        self.compress()
    }

    /// Encodes points alone, exactly as [`Encoder::encode`] encodes the same points as
    /// [`Record::Point`]s, from any [`PointView`].
    pub fn encode_points<P: PointView>(&mut self, points: &[P]) -> Result<Vec<u8>, CodecError> {
        let body = &mut self.body;
        body.clear();
        body.push(CODEC_VERSION);
        if points.is_empty() {
            put_varint(body, 0);
        } else {
            put_varint(body, 1);
            body.push(SEG_POINTS);
            encode_points(body, points);
        }
        self.compress()
    }

    /// The body, size-checked and compressed.
    fn compress(&mut self) -> Result<Vec<u8>, CodecError> {
        let body = &self.body;
        if body.len() > MAX_BODY_LEN {
            return Err(CodecError::TooLarge {
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| CodecError::Compression(e.to_string()))?,
            ),
        };
        zstd.compress(body)
            .map_err(|e| CodecError::Compression(e.to_string()))
    }
}

/// Decodes batches, reusing its zstd context.
#[derive(Default)]
pub struct Decoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a payload into records in apply order (see the module docs).
    pub fn decode(&mut self, payload: &[u8]) -> Result<Vec<Record>, CodecError> {
        let size = zstd::zstd_safe::get_frame_content_size(payload)
            .ok()
            .flatten()
            .ok_or(CodecError::BadFrame)?;
        let size = usize::try_from(size).map_err(|_| CodecError::BadFrame)?;
        if size > MAX_BODY_LEN {
            return Err(CodecError::TooLarge {
                len: size,
                max: MAX_BODY_LEN,
            });
        }
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| CodecError::Compression(e.to_string()))?,
            ),
        };
        let body = zstd
            .decompress(payload, size)
            .map_err(|_| CodecError::BadFrame)?;
        decode_body(&body)
    }
}

/// Encodes records (in sequence order) into a compressed payload, with a fresh context.
pub fn encode(records: &[Record]) -> Result<Vec<u8>, CodecError> {
    Encoder::new().encode(records)
}

/// Decodes a payload into records in apply order, with a fresh context.
pub fn decode(payload: &[u8]) -> Result<Vec<Record>, CodecError> {
    Decoder::new().decode(payload)
}

fn decode_body(body: &[u8]) -> Result<Vec<Record>, CodecError> {
    let mut r = Reader { buf: body };
    let version = r.byte("version")?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version(version));
    }
    let n_segments = r.count("segment count", 1)?;
    let mut out = Vec::new();
    for _ in 0..n_segments {
        match r.byte("segment kind")? {
            SEG_POINTS => decode_points(&mut r, &mut out)?,
            SEG_DEVICES => {
                let len = r.count("device segment length", 1)?;
                let bytes = r.take(len, "device segment")?;
                let devices: Vec<DeviceRecord> = postcard::from_bytes(bytes)
                    .map_err(|_| CodecError::Invalid("device record"))?;
                for d in &devices {
                    d.check()
                        .map_err(|_| CodecError::Invalid("device record"))?;
                }
                out.extend(devices.into_iter().map(|d| Record::Device(Box::new(d))));
            }
            _ => return Err(CodecError::Invalid("segment kind")),
        }
    }
    if !r.buf.is_empty() {
        return Err(CodecError::TrailingBytes(r.buf.len()));
    }
    Ok(out)
}

enum Segment<'a> {
    Points(Vec<&'a Point>),
    Devices(Vec<&'a DeviceRecord>),
}

fn split_segments(records: &[Record]) -> Vec<Segment<'_>> {
    let mut out: Vec<Segment<'_>> = Vec::new();
    for r in records {
        match (r, out.last_mut()) {
            (Record::Point(p), Some(Segment::Points(v))) => v.push(p),
            (Record::Device(d), Some(Segment::Devices(v))) => v.push(&**d),
            (Record::Point(p), _) => out.push(Segment::Points(vec![p])),
            (Record::Device(d), _) => out.push(Segment::Devices(vec![&**d])),
        }
    }
    out
}

fn encode_points<P: PointView>(body: &mut Vec<u8>, points: &[P]) {
    // Group per series, then by time; equal times keep stream order. A batch often comes
    // in that order already (a gateway's request device by device, a log row of one
    // series): one pass tells, instead of a sort's ten comparisons a point. Each point's key
    // is read from its view once, not at every comparison.
    let keys: Vec<(&str, &str, i64)> = points
        .iter()
        .map(|p| (p.device(), p.resource(), p.t()))
        .collect();
    let mut order: Vec<u32> = (0..points.len() as u32).collect();
    if !keys.is_sorted() {
        order.sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]).then(a.cmp(&b)));
    }

    // Series runs, the device table (sorted, as series are), the resource table.
    let mut series: Vec<(u32, u32, std::ops::Range<usize>)> = Vec::new();
    let mut devices: Vec<&str> = Vec::new();
    let mut resources: Vec<&str> = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let (device, resource, _) = keys[order[start] as usize];
        let mut end = start + 1;
        while end < order.len() {
            let (d, r, _) = keys[order[end] as usize];
            if d != device || r != resource {
                break;
            }
            end += 1;
        }
        if devices.last() != Some(&device) {
            devices.push(device);
        }
        let res = match resources.iter().position(|r| *r == resource) {
            Some(i) => i,
            None => {
                resources.push(resource);
                resources.len() - 1
            }
        };
        series.push(((devices.len() - 1) as u32, res as u32, start..end));
        start = end;
    }

    put_varint(body, devices.len() as u64);
    let mut prev: &str = "";
    for d in &devices {
        let shared = prev
            .bytes()
            .zip(d.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(body, shared as u64);
        put_varint(body, (d.len() - shared) as u64);
        body.extend_from_slice(&d.as_bytes()[shared..]);
        prev = d;
    }
    put_varint(body, resources.len() as u64);
    for r in &resources {
        put_varint(body, r.len() as u64);
        body.extend_from_slice(r.as_bytes());
    }

    let mut times = Vec::with_capacity(points.len() * 3);
    let mut values = Vec::with_capacity(points.len() * 3);
    let base_t = series
        .iter()
        .map(|(_, _, range)| points[order[range.start] as usize].t())
        .min()
        .unwrap_or(0);
    put_varint(&mut times, zigzag(base_t));
    put_varint(body, series.len() as u64);
    let mut prev_dev = 0u32;
    let mut scratch: Vec<&P> = Vec::new();
    for (dev, res, range) in &series {
        scratch.clear();
        scratch.extend(order[range.clone()].iter().map(|&i| &points[i as usize]));
        put_varint(body, u64::from(dev - prev_dev));
        prev_dev = *dev;
        put_varint(body, u64::from(*res));
        put_varint(body, scratch.len() as u64);

        let t0 = scratch[0].t();
        put_varint(&mut times, t0.wrapping_sub(base_t) as u64);
        let mut prev_t = t0;
        let mut prev_d = 0i64;
        for p in &scratch[1..] {
            let d = p.t().wrapping_sub(prev_t);
            put_varint(&mut times, zigzag(d.wrapping_sub(prev_d)));
            prev_d = d;
            prev_t = p.t();
        }
        encode_values(body, &mut values, &scratch);
    }
    put_varint(body, times.len() as u64);
    body.extend_from_slice(&times);
    put_varint(body, values.len() as u64);
    body.extend_from_slice(&values);
}

/// Writes the series' encoding tag (and parameter) to the header, and its values to `out`.
fn encode_values<P: PointView>(header: &mut Vec<u8>, out: &mut Vec<u8>, series: &[&P]) {
    let kind = value_tag(series[0].value());
    if series.iter().any(|p| value_tag(p.value()) != kind) {
        header.push(ENC_MIXED);
        for p in series {
            out.push(value_tag(p.value()));
            put_plain_value(out, p.value());
        }
        return;
    }
    match series[0].value() {
        Value::Number(_) => {
            let nums = || {
                series.iter().map(|p| match *p.value() {
                    Value::Number(x) => x,
                    _ => 0.0,
                })
            };
            if let Some(k) = decimal_exponent(nums()) {
                header.push(ENC_DECIMAL);
                header.push(k);
                let scale = POW10[usize::from(k)];
                let mut prev = 0i64;
                for x in nums() {
                    let s = (x * scale).round() as i64;
                    put_varint(out, zigzag(s.wrapping_sub(prev)));
                    prev = s;
                }
            } else {
                header.push(ENC_XOR);
                let mut prev = 0u64;
                for x in nums() {
                    put_varint(out, x.to_bits() ^ prev);
                    prev = x.to_bits();
                }
            }
        }
        Value::Integer(_) => {
            header.push(ENC_INTEGER);
            let mut prev = 0i64;
            for p in series {
                if let Value::Integer(i) = *p.value() {
                    put_varint(out, zigzag(i.wrapping_sub(prev)));
                    prev = i;
                }
            }
        }
        Value::Boolean(_) => {
            header.push(ENC_BOOLEAN);
            for p in series {
                out.push(u8::from(matches!(p.value(), Value::Boolean(true))));
            }
        }
        Value::String(_) | Value::Json(_) => {
            header.push(kind);
            for p in series {
                put_plain_value(out, p.value());
            }
        }
    }
}

fn value_tag(v: &Value) -> u8 {
    match v {
        Value::Number(_) => ENC_XOR,
        Value::Integer(_) => ENC_INTEGER,
        Value::Boolean(_) => ENC_BOOLEAN,
        Value::String(_) => ENC_STRING,
        Value::Json(_) => ENC_JSON,
    }
}

fn put_plain_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Number(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Integer(i) => put_varint(out, zigzag(*i)),
        Value::Boolean(b) => out.push(u8::from(*b)),
        Value::String(s) | Value::Json(s) => {
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

const POW10: [f64; MAX_DECIMAL_EXP as usize + 1] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
    1_000_000_000.0,
];

/// The smallest `k` such that every value is exactly `integer / 10^k`, with the integers
/// small enough to be exact in an f64; `None` when there is none up to [`MAX_DECIMAL_EXP`].
fn decimal_exponent(values: impl Iterator<Item = f64> + Clone) -> Option<u8> {
    'k: for k in 0..=MAX_DECIMAL_EXP {
        let scale = POW10[usize::from(k)];
        for x in values.clone() {
            let s = (x * scale).round();
            // Checked the way the decoder computes it, through the integer (so -0.0 fails).
            if s.is_nan()
                || s.abs() >= (1u64 << 53) as f64
                || ((s as i64) as f64 / scale).to_bits() != x.to_bits()
            {
                continue 'k;
            }
        }
        return Some(k);
    }
    None
}

fn decode_points(r: &mut Reader<'_>, out: &mut Vec<Record>) -> Result<(), CodecError> {
    let n_devices = r.count("device count", 2)?;
    let mut devices: Vec<Identity> = Vec::with_capacity(n_devices);
    // The previous identity, which the next one shares a prefix with: one buffer for all.
    let mut prev: Vec<u8> = Vec::new();
    for _ in 0..n_devices {
        let shared = r.count("identity prefix", 0)?;
        let len = r.count("identity length", 1)?;
        let suffix = r.take(len, "identity")?;
        if shared > prev.len() {
            return Err(CodecError::Invalid("identity prefix"));
        }
        prev.truncate(shared);
        prev.extend_from_slice(suffix);
        let s = std::str::from_utf8(&prev).map_err(|_| CodecError::Invalid("identity"))?;
        devices.push(Identity::parse(s).map_err(|_| CodecError::Invalid("identity"))?);
    }
    let n_resources = r.count("resource count", 2)?;
    let mut resources = Vec::with_capacity(n_resources);
    for _ in 0..n_resources {
        let len = r.count("resource name length", 1)?;
        let name = std::str::from_utf8(r.take(len, "resource name")?)
            .map_err(|_| CodecError::Invalid("resource name"))?;
        resources.push(ResourceName::parse(name).map_err(|_| CodecError::Invalid("resource"))?);
    }
    let n_series = r.count("series count", 4)?;
    let mut headers = Vec::with_capacity(n_series);
    let mut dev = 0usize;
    let mut total = 0usize;
    for _ in 0..n_series {
        dev = dev
            .checked_add(r.count("device index", 0)?)
            .filter(|d| *d < devices.len())
            .ok_or(CodecError::Invalid("device index"))?;
        let res = r.count("resource index", 0)?;
        if res >= resources.len() {
            return Err(CodecError::Invalid("resource index"));
        }
        let n = r.count("point count", 0)?;
        if n == 0 {
            return Err(CodecError::Invalid("point count"));
        }
        total = total
            .checked_add(n)
            .filter(|t| *t <= MAX_BODY_LEN)
            .ok_or(CodecError::Invalid("point count"))?;
        let enc = r.byte("value encoding")?;
        let k = if enc == ENC_DECIMAL {
            let k = r.byte("decimal exponent")?;
            if k > MAX_DECIMAL_EXP {
                return Err(CodecError::Invalid("decimal exponent"));
            }
            k
        } else if enc > ENC_MIXED {
            return Err(CodecError::Invalid("value encoding"));
        } else {
            0
        };
        headers.push((dev, res, n, enc, k));
    }
    let times_len = r.count("times length", 1)?;
    let mut times = Reader {
        buf: r.take(times_len, "times")?,
    };
    let values_len = r.count("values length", 1)?;
    let mut values = Reader {
        buf: r.take(values_len, "values")?,
    };
    // Every point needs at least one byte of each stream: this bounds the allocation.
    if total > times.buf.len() || total > values.buf.len() {
        return Err(CodecError::Truncated("point columns"));
    }
    out.reserve(total);
    let base_t = unzigzag(times.varint("base time")?);
    for (dev, res, n, enc, k) in headers {
        let mut t = base_t.wrapping_add(times.varint("time")? as i64);
        let mut d = 0i64;
        let mut prev_num = 0i64;
        let mut prev_bits = 0u64;
        for i in 0..n {
            if i > 0 {
                d = d.wrapping_add(unzigzag(times.varint("time")?));
                t = t.wrapping_add(d);
            }
            if !(0..=MAX_TIMESTAMP).contains(&t) {
                return Err(CodecError::Invalid("timestamp"));
            }
            let value = match enc {
                ENC_DECIMAL => {
                    prev_num = prev_num.wrapping_add(unzigzag(values.varint("value")?));
                    Value::Number(prev_num as f64 / POW10[usize::from(k)])
                }
                ENC_XOR => {
                    prev_bits ^= values.varint("value")?;
                    finite(f64::from_bits(prev_bits))?
                }
                ENC_INTEGER => {
                    prev_num = prev_num.wrapping_add(unzigzag(values.varint("value")?));
                    Value::Integer(prev_num)
                }
                ENC_MIXED => {
                    let tag = values.byte("value tag")?;
                    plain_value(&mut values, tag)?
                }
                tag => plain_value(&mut values, tag)?,
            };
            out.push(Record::Point(Point {
                device: devices[dev].clone(),
                resource: resources[res].clone(),
                t,
                value,
            }));
        }
    }
    if !times.buf.is_empty() || !values.buf.is_empty() {
        return Err(CodecError::Invalid("column length"));
    }
    Ok(())
}

fn finite(x: f64) -> Result<Value, CodecError> {
    if x.is_finite() {
        Ok(Value::Number(x))
    } else {
        Err(CodecError::Invalid("number"))
    }
}

fn plain_value(r: &mut Reader<'_>, tag: u8) -> Result<Value, CodecError> {
    Ok(match tag {
        ENC_XOR => {
            let b = r.take(8, "number")?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            finite(f64::from_le_bytes(a))?
        }
        ENC_INTEGER => Value::Integer(unzigzag(r.varint("integer")?)),
        ENC_BOOLEAN => match r.byte("boolean")? {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            _ => return Err(CodecError::Invalid("boolean")),
        },
        ENC_STRING | ENC_JSON => {
            let len = r.count("text length", 1)?;
            if len > MAX_TEXT_VALUE {
                return Err(CodecError::Invalid("text length"));
            }
            let s = std::str::from_utf8(r.take(len, "text")?)
                .map_err(|_| CodecError::Invalid("text"))?
                .to_owned();
            if tag == ENC_STRING {
                Value::String(s)
            } else {
                Value::Json(s)
            }
        }
        _ => return Err(CodecError::Invalid("value tag")),
    })
}

/// First byte of a row in the plain layout ([`encode_plain`]); never the first of a zstd
/// frame (`0x28`), so a store can keep both kinds of rows in one table.
pub const PLAIN_MARK: u8 = 0xa1;

/// A point of the plain layout: device and resource are numbers (a store's row ids).
#[derive(Debug, Clone, PartialEq)]
pub struct PlainPoint {
    pub device: u64,
    pub resource: u64,
    pub t: i64,
    pub value: Value,
}

/// Appends points in the plain layout to `out` (which should be empty): no sorting, no
/// columns, no compression, so writing costs a few bytes' work a point. For a store's own
/// log rows, written on the latency path of every point and read only when the store opens
/// (the batch layout above took a Target's writer 0.2 ms for 1,000 points).
///
/// ```text
/// row   := PLAIN_MARK n (device resource Δt tag value)*     -- varints; Δt = zz(t - previous t),
///                                                             the first from 0
/// value := as a mixed column's: 1 f64 LE | 2 zz | 3 byte | 4 / 5 len bytes
/// ```
pub fn encode_plain<'a>(
    points: impl ExactSizeIterator<Item = (u64, u64, i64, &'a Value)>,
    out: &mut Vec<u8>,
) {
    out.push(PLAIN_MARK);
    put_varint(out, points.len() as u64);
    let mut prev = 0i64;
    for (device, resource, t, value) in points {
        put_varint(out, device);
        put_varint(out, resource);
        put_varint(out, zigzag(t.wrapping_sub(prev)));
        prev = t;
        out.push(value_tag(value));
        put_plain_value(out, value);
    }
}

/// Decodes a row of [`encode_plain`], checking it as [`decode`] checks a batch: never
/// panics, allocates no more than its input allows, and rejects a missing mark, trailing
/// bytes, unknown tags, non-finite numbers and timestamps outside the model's range.
pub fn decode_plain(row: &[u8]) -> Result<Vec<PlainPoint>, CodecError> {
    let mut r = Reader { buf: row };
    if r.byte("plain mark")? != PLAIN_MARK {
        return Err(CodecError::Invalid("plain mark"));
    }
    // A point takes at least four bytes (device, resource, Δt, tag) and its value.
    let n = r.count("point count", 5)?;
    let mut out = Vec::with_capacity(n);
    let mut t = 0i64;
    for _ in 0..n {
        let device = r.varint("device")?;
        let resource = r.varint("resource")?;
        t = t.wrapping_add(unzigzag(r.varint("time")?));
        if !(0..=MAX_TIMESTAMP).contains(&t) {
            return Err(CodecError::Invalid("timestamp"));
        }
        let tag = r.byte("value tag")?;
        let value = plain_value(&mut r, tag)?;
        out.push(PlainPoint {
            device,
            resource,
            t,
            value,
        });
    }
    if !r.buf.is_empty() {
        return Err(CodecError::TrailingBytes(r.buf.len()));
    }
    Ok(out)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let (&b, rest) = self.buf.split_first().ok_or(CodecError::Truncated(what))?;
        self.buf = rest;
        Ok(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CodecError::Invalid(what));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Invalid(what))
    }

    /// A count or length, checked against what remains: each counted item needs at least
    /// `min_bytes` more bytes, so a lying count fails here instead of allocating.
    fn count(&mut self, what: &'static str, min_bytes: usize) -> Result<usize, CodecError> {
        let v = self.varint(what)?;
        let v = usize::try_from(v).map_err(|_| CodecError::Invalid(what))?;
        if v.saturating_mul(min_bytes) > self.buf.len() {
            return Err(CodecError::Truncated(what));
        }
        Ok(v)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() {
            return Err(CodecError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::device::tests::arb_change;
    use proptest::prelude::*;

    fn point(dev: &str, res: &str, t: i64, value: Value) -> Record {
        Record::Point(Point {
            device: Identity::parse(dev).unwrap(),
            resource: ResourceName::parse(res).unwrap(),
            t,
            value,
        })
    }

    /// The order decode promises: segments in order, within a points segment by
    /// (device, resource, t), stable.
    fn apply_order(records: &[Record]) -> Vec<Record> {
        let mut out = Vec::new();
        for seg in split_segments(records) {
            match seg {
                Segment::Points(mut ps) => {
                    ps.sort_by(|a, b| {
                        (a.device.as_str(), a.resource.as_str(), a.t).cmp(&(
                            b.device.as_str(),
                            b.resource.as_str(),
                            b.t,
                        ))
                    });
                    out.extend(ps.into_iter().map(|p| Record::Point(p.clone())));
                }
                Segment::Devices(ds) => {
                    out.extend(ds.into_iter().map(|d| Record::Device(Box::new(d.clone()))))
                }
            }
        }
        out
    }

    fn check(records: Vec<Record>) {
        let bytes = encode(&records).unwrap();
        let back = decode(&bytes).unwrap();
        let expected = apply_order(&records);
        assert_eq!(back.len(), expected.len());
        for (a, b) in back.iter().zip(&expected) {
            match (a, b) {
                (Record::Point(a), Record::Point(b)) => {
                    assert_eq!((&a.device, &a.resource, a.t), (&b.device, &b.resource, b.t));
                    match (&a.value, &b.value) {
                        (Value::Number(x), Value::Number(y)) => {
                            assert_eq!(x.to_bits(), y.to_bits())
                        }
                        (x, y) => assert_eq!(x, y),
                    }
                }
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn values_of_every_format_round_trip() {
        check(vec![]);
        check(vec![
            point("d1", "temp", 1_000, Value::Number(21.53)),
            point("d1", "temp", 2_000, Value::Number(21.54)),
            point("d1", "temp", 1_500, Value::Number(-0.0)),
            point("d2", "temp", 1_000, Value::Number(std::f64::consts::PI)),
            point("d2", "count", 7, Value::Integer(i64::MIN)),
            point("d2", "count", 8, Value::Integer(i64::MAX)),
            point("d1", "on", 8, Value::Boolean(true)),
            point("d1", "name", 8, Value::String("héllo".into())),
            point("d1", "cfg", 8, Value::Json(r#"{"a":1}"#.into())),
            point("d1", "mix", 8, Value::Json("[]".into())),
            point("d1", "mix", 9, Value::Number(1e300)),
            point("d1", "mix", 9, Value::Integer(-5)),
        ]);
    }

    #[test]
    fn decimal_exponent_is_the_smallest_exact_one() {
        assert_eq!(decimal_exponent([1.0, 2.0].into_iter()), Some(0));
        assert_eq!(decimal_exponent([21.53, 21.5].into_iter()), Some(2));
        assert_eq!(decimal_exponent([0.1 + 0.2].into_iter()), None);
        assert_eq!(decimal_exponent([-0.0].into_iter()), None);
        assert_eq!(decimal_exponent([1e300].into_iter()), None);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(decode(b""), Err(CodecError::BadFrame));
        assert_eq!(decode(b"not zstd at all"), Err(CodecError::BadFrame));
        let z = |b: &[u8]| zstd::bulk::compress(b, 1).unwrap();
        assert_eq!(decode(&z(&[9])), Err(CodecError::Version(9)));
        assert_eq!(
            decode(&z(&[1, 1, 7])),
            Err(CodecError::Invalid("segment kind"))
        );
        assert_eq!(decode(&z(&[1, 0, 0])), Err(CodecError::TrailingBytes(1)));
        assert!(matches!(
            decode(&z(&[1, 200, 200, 200, 1])),
            Err(CodecError::Truncated(_))
        ));
    }

    #[test]
    fn a_plain_row_that_is_not_one_is_refused_with_what_is_wrong() {
        let row = |points: &[(u64, u64, i64, Value)]| {
            let mut row = Vec::new();
            encode_plain(points.iter().map(|(d, r, t, v)| (*d, *r, *t, v)), &mut row);
            row
        };
        let good = row(&[(1, 2, 5, Value::Integer(7)), (3, 2, 4, Value::Number(1.5))]);
        assert_eq!(decode_plain(&good).unwrap().len(), 2);
        assert_eq!(decode_plain(&[]), Err(CodecError::Truncated("plain mark")));
        // A batch payload (a zstd frame) is not a plain row.
        let batch = encode(&[point("d", "r", 1, Value::Integer(1))]).unwrap();
        assert_eq!(decode_plain(&batch), Err(CodecError::Invalid("plain mark")));
        assert_eq!(
            decode_plain(&good[..good.len() - 1]),
            Err(CodecError::Truncated("number"))
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_plain(&long), Err(CodecError::TrailingBytes(1)));
        assert_eq!(
            decode_plain(&row(&[(1, 2, MAX_TIMESTAMP + 1, Value::Integer(0))])),
            Err(CodecError::Invalid("timestamp"))
        );
        assert_eq!(
            decode_plain(&row(&[(1, 2, 5, Value::Number(f64::NAN))])),
            Err(CodecError::Invalid("number"))
        );
        // A count that the bytes cannot hold fails before allocating for it.
        assert_eq!(
            decode_plain(&[PLAIN_MARK, 0xff, 0xff, 0xff, 0x7f]),
            Err(CodecError::Truncated("point count"))
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-1_000_000i64..1_000_000, 0u32..4)
                .prop_map(|(m, k)| Value::Number(m as f64 / 10f64.powi(k as i32))),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::Number),
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,20}".prop_map(Value::String),
            "[a-z0-9]{0,10}".prop_map(|s| Value::Json(format!("{s:?}"))),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            8 => ("d[0-3]", "r[0-2]", 0i64..(1 << 40), arb_value())
                .prop_map(|(d, r, t, v)| point(&d, &r, t, v)),
            1 => arb_change().prop_map(|d| Record::Device(Box::new(d))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn any_records_round_trip(records in prop::collection::vec(arb_record(), 0..60)) {
            check(records);
        }

        /// Points through a view encode to the very bytes the same points do as records:
        /// a store's rows encoded either way read back alike.
        #[test]
        fn points_through_a_view_encode_as_records_do(
            records in prop::collection::vec(arb_record(), 0..60)
        ) {
            let points: Vec<Record> = records
                .into_iter()
                .filter(|r| matches!(r, Record::Point(_)))
                .collect();
            let views: Vec<&Point> = points
                .iter()
                .filter_map(|r| match r {
                    Record::Point(p) => Some(p),
                    Record::Device(_) => None,
                })
                .collect();
            let mut encoder = Encoder::new();
            prop_assert_eq!(encoder.encode_points(&views)?, encode(&points)?);
        }

        /// Any points, in any order, come back from the plain layout as they went in.
        #[test]
        fn plain_rows_round_trip(
            points in prop::collection::vec(
                (any::<u64>(), any::<u64>(), 0..=MAX_TIMESTAMP, arb_value()),
                0..60,
            )
        ) {
            let mut row = Vec::new();
            encode_plain(points.iter().map(|(d, r, t, v)| (*d, *r, *t, v)), &mut row);
            let back: Vec<(u64, u64, i64, Value)> = decode_plain(&row)?
                .into_iter()
                .map(|p| (p.device, p.resource, p.t, p.value))
                .collect();
            prop_assert_eq!(back, points);
        }

        #[test]
        fn random_plain_rows_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_plain(&bytes);
            let mut row = vec![PLAIN_MARK];
            row.extend_from_slice(&bytes);
            let _ = decode_plain(&row);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = decode_body(&bytes);
            let mut framed = vec![CODEC_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = decode_body(&framed);
            if let Ok(z) = zstd::bulk::compress(&framed, 1) {
                let _ = decode(&z);
            }
        }

        #[test]
        fn corrupted_bodies_never_panic(
            records in prop::collection::vec(arb_record(), 1..20),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let payload = encode(&records).unwrap();
            let size = zstd::zstd_safe::get_frame_content_size(&payload).unwrap().unwrap();
            let mut body = zstd::bulk::decompress(&payload, size as usize).unwrap();
            for (ix, b) in flips {
                let i = ix.index(body.len());
                body[i] ^= b;
            }
            let _ = decode_body(&body);
        }
    }
}
