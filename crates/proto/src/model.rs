//! The domain of docs/spec.md §3: identifiers, resource formats, values, devices' tags, permissions
//! and states, each with the validation that decides what a site accepts.
//!
//! Everything here is plain data with `parse`/`check` constructors: a value of one of these
//! types is valid by construction, so code past the API boundary never re-validates. Errors
//! are [`ModelError`] variants whose `Display` is a sentence an operator can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a piece of user input is not a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("connector id {0:?} is not 14 lowercase letters or digits")]
    ConnectorId(String),
    #[error("resource name {0:?} must be 1 to 64 characters of a-z, 0-9 and _")]
    ResourceName(String),
    #[error(
        "device identity {0:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'"
    )]
    Identity(String),
    #[error("format {0:?} is not one of number, integer, string, boolean, json")]
    Format(String),
    #[error("tag key {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")]
    TagKey(String),
    #[error("tag {key:?} has a value longer than {max} bytes", max = MAX_TAG_VALUE)]
    TagValue { key: String },
    #[error("a device has at most {max} tags", max = MAX_TAGS)]
    TooManyTags,
    #[error("permission principal {0:?} must be 1 to 128 printable characters")]
    Principal(String),
    #[error("a device has at most {max} permission grants", max = MAX_PERMISSIONS)]
    TooManyPermissions,
    #[error("value for resource {resource:?} is not a valid {format}: {reason}")]
    Value {
        resource: String,
        format: Format,
        reason: &'static str,
    },
    #[error("timestamp {0} is outside the supported range (0 to year 2255 in microseconds)")]
    Timestamp(i64),
    #[error("connector name must be 1 to 128 characters")]
    ConnectorName,
    #[error("unit must be at most 32 characters")]
    Unit,
}

/// Length of a connector id.
pub const CONNECTOR_ID_LEN: usize = 14;
/// Longest tag value in bytes.
pub const MAX_TAG_VALUE: usize = 256;
/// Most tags on one device.
pub const MAX_TAGS: usize = 64;
/// Most permission grants on one device.
pub const MAX_PERMISSIONS: usize = 64;
/// Longest `string` or serialized `json` value in bytes.
pub const MAX_TEXT_VALUE: usize = 16 * 1024;
/// Latest accepted timestamp: 2^53 µs, past the year 2255, and exact in a JavaScript number.
pub const MAX_TIMESTAMP: i64 = 1 << 53;

const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A connector's id: 14 lowercase letters or digits, like `09iolmnn8090ol`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectorId(String);

impl ConnectorId {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if s.len() == CONNECTOR_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(ModelError::ConnectorId(s.to_owned()))
        }
    }

    /// Makes an id from random bytes supplied by the caller (this crate draws no randomness).
    pub fn from_random(bytes: [u8; CONNECTOR_ID_LEN]) -> Self {
        let s = bytes
            .iter()
            .map(|b| ID_ALPHABET[usize::from(*b) % ID_ALPHABET.len()] as char)
            .collect();
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConnectorId {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        Self::parse(&s)
    }
}

impl From<ConnectorId> for String {
    fn from(id: ConnectorId) -> String {
        id.0
    }
}

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource's name: `[a-z0-9_]{1,64}`, shared by every device of its connector.
///
/// Shared, not copied, when cloned: every point of a decoded batch names its resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(Arc<str>);

impl ResourceName {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Ok(Self(Arc::from(s)))
        } else {
            Err(ModelError::ResourceName(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceName {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        Self::parse(&s)
    }
}

impl From<ResourceName> for String {
    fn from(n: ResourceName) -> String {
        n.0.as_ref().to_owned()
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device's identity, unique within its connector: a serial number, a MAC address, …
///
/// The alphabet keeps identities safe in URL paths without escaping. Shared, not copied,
/// when cloned: a decoded batch names each device once, and each of its points clones it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Identity(Arc<str>);

impl Identity {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            Ok(Self(Arc::from(s)))
        } else {
            Err(ModelError::Identity(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Identity {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        Self::parse(&s)
    }
}

impl From<Identity> for String {
    fn from(n: Identity) -> String {
        n.0.as_ref().to_owned()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The format of a resource's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Number,
    Integer,
    String,
    Boolean,
    Json,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Number,
        Format::Integer,
        Format::String,
        Format::Boolean,
        Format::Json,
    ];

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| ModelError::Format(s.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Number => "number",
            Format::Integer => "integer",
            Format::String => "string",
            Format::Boolean => "boolean",
            Format::Json => "json",
        }
    }

    /// Checks a JSON value written to a resource of this format and converts it.
    pub fn check(
        self,
        resource: &ResourceName,
        v: &serde_json::Value,
    ) -> Result<Value, ModelError> {
        let err = |reason| ModelError::Value {
            resource: resource.to_string(),
            format: self,
            reason,
        };
        match self {
            Format::Number => match v.as_f64() {
                Some(x) if v.is_number() && x.is_finite() => Ok(Value::Number(x)),
                _ => Err(err("expected a finite number")),
            },
            Format::Integer => match v {
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(Value::Integer)
                    .ok_or(err("expected a whole number between -2^63 and 2^63-1")),
                _ => Err(err("expected a whole number")),
            },
            Format::String => match v.as_str() {
                Some(s) if s.len() <= MAX_TEXT_VALUE => Ok(Value::String(s.to_owned())),
                Some(_) => Err(err("longer than 16 KiB")),
                None => Err(err("expected a string")),
            },
            Format::Boolean => v
                .as_bool()
                .map(Value::Boolean)
                .ok_or(err("expected true or false")),
            Format::Json => {
                let text = v.to_string();
                if text.len() <= MAX_TEXT_VALUE {
                    Ok(Value::Json(text))
                } else {
                    Err(err("longer than 16 KiB once serialized"))
                }
            }
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked value of a resource. `Json` keeps the compact serialized text, which is how it
/// is stored and sent; [`Value::to_json`] turns it back into a JSON value for answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Number(f64),
    Integer(i64),
    String(String),
    Boolean(bool),
    Json(String),
}

impl Value {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Number(x) => serde_json::Number::from_f64(*x)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::String(s) => serde_json::Value::from(s.as_str()),
            Value::Boolean(b) => serde_json::Value::from(*b),
            Value::Json(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Checks a timestamp in microseconds since the epoch.
pub fn check_timestamp(t: i64) -> Result<i64, ModelError> {
    if (0..=MAX_TIMESTAMP).contains(&t) {
        Ok(t)
    } else {
        Err(ModelError::Timestamp(t))
    }
}

/// A device's tags: a string map with checked keys and bounded values.
pub type Tags = BTreeMap<String, String>;

pub fn check_tags(tags: &Tags) -> Result<(), ModelError> {
    if tags.len() > MAX_TAGS {
        return Err(ModelError::TooManyTags);
    }
    for (k, v) in tags {
        if !((1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(ModelError::TagKey(k.clone()));
        }
        if v.len() > MAX_TAG_VALUE {
            return Err(ModelError::TagValue { key: k.clone() });
        }
    }
    Ok(())
}

/// What a principal may do with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Manage,
}

/// One grant of a device's permission list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Permission {
    /// A user or group name.
    pub principal: String,
    pub access: Access,
}

pub fn check_permissions(perms: &[Permission]) -> Result<(), ModelError> {
    if perms.len() > MAX_PERMISSIONS {
        return Err(ModelError::TooManyPermissions);
    }
    for p in perms {
        if !(1..=128).contains(&p.principal.len()) || p.principal.chars().any(char::is_control) {
            return Err(ModelError::Principal(p.principal.clone()));
        }
    }
    Ok(())
}

/// Whether a device may connect and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    #[default]
    Provisioned,
    Locked,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Provisioned => "provisioned",
            DeviceState::Locked => "locked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provisioned" => Some(DeviceState::Provisioned),
            "locked" => Some(DeviceState::Locked),
            _ => None,
        }
    }
}

/// What a device list is sorted by; devices with the same key follow in identity order, so
/// that the order is total and a page can continue exactly where the last one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Identity,
    /// Locked devices before provisioned ones.
    State,
    /// The time of the device's newest point; never-seen devices first.
    LastSeen,
    /// Devices whose latest change here is not yet applied by the peer (pending) after
    /// those in sync.
    Sync,
}

impl DeviceSort {
    pub const ALL: [DeviceSort; 4] = [
        DeviceSort::Identity,
        DeviceSort::State,
        DeviceSort::LastSeen,
        DeviceSort::Sync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSort::Identity => "identity",
            DeviceSort::State => "state",
            DeviceSort::LastSeen => "last_seen",
            DeviceSort::Sync => "sync",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A device list's filter on when a device last wrote a point (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeenFilter {
    /// Seen at or after this time.
    Since(i64),
    /// Seen, but not since this time (silent since).
    Before(i64),
    /// Never seen: no point at all.
    Never,
}

/// A place in a sorted device list: a device's sort key ([`DeviceSort`]; 0 when sorted by
/// identity) and its identity. A page starts just after it, or, going `back`, ends just
/// before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListPlace {
    pub key: i64,
    pub identity: Identity,
    pub back: bool,
}

/// A connector's place in a Remote-Sync pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    None,
    Source,
    Target,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Source => "source",
            Role::Target => "target",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Role::None),
            "source" => Some(Role::Source),
            "target" => Some(Role::Target),
            _ => None,
        }
    }
}

/// Where a connector stands in the pairing process of docs/spec.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    #[default]
    Disabled,
    Pairing,
    Paired,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Disabled => "disabled",
            SyncState::Pairing => "pairing",
            SyncState::Paired => "paired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disabled" => Some(SyncState::Disabled),
            "pairing" => Some(SyncState::Pairing),
            "paired" => Some(SyncState::Paired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connector_ids() {
        assert!(ConnectorId::parse("09iolmnn8090ol").is_ok());
        for bad in [
            "",
            "09iolmnn8090o",
            "09iolmnn8090olx",
            "09IOLMNN8090OL",
            "09iolmnn8090o-",
        ] {
            assert!(ConnectorId::parse(bad).is_err(), "{bad}");
        }
        let id = ConnectorId::from_random([255; CONNECTOR_ID_LEN]);
        assert!(ConnectorId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn names_and_identities() {
        assert!(ResourceName::parse("data_in").is_ok());
        assert!(ResourceName::parse("Temp").is_err());
        assert!(ResourceName::parse(&"a".repeat(65)).is_err());
        assert!(Identity::parse("00:1A:2b:3C:4d:5E").is_ok());
        assert!(Identity::parse("a/b").is_err());
        assert!(Identity::parse("").is_err());
    }

    fn check(format: Format, input: serde_json::Value, expected: Option<Value>) {
        let name = ResourceName::parse("r").unwrap();
        assert_eq!(
            format.check(&name, &input).ok(),
            expected,
            "{format} {input}"
        );
    }

    #[test]
    fn value_formats() {
        check(Format::Number, json!(21.5), Some(Value::Number(21.5)));
        check(Format::Number, json!(3), Some(Value::Number(3.0)));
        check(Format::Number, json!("21.5"), None);
        check(Format::Integer, json!(7), Some(Value::Integer(7)));
        check(Format::Integer, json!(7.5), None);
        check(Format::Integer, json!(u64::MAX), None);
        check(
            Format::String,
            json!("on"),
            Some(Value::String("on".into())),
        );
        check(Format::String, json!(1), None);
        check(Format::Boolean, json!(true), Some(Value::Boolean(true)));
        check(Format::Boolean, json!(0), None);
        check(
            Format::Json,
            json!({"a": [1, 2]}),
            Some(Value::Json(r#"{"a":[1,2]}"#.into())),
        );
        check(Format::String, json!("x".repeat(MAX_TEXT_VALUE + 1)), None);
    }

    #[test]
    fn json_values_round_trip() {
        let v = json!({"k": "v", "n": [1, 2.5, null]});
        let name = ResourceName::parse("cfg").unwrap();
        assert_eq!(Format::Json.check(&name, &v).unwrap().to_json(), v);
    }

    #[test]
    fn tags_and_permissions() {
        let mut tags = Tags::new();
        tags.insert("site".into(), "plant-1".into());
        assert!(check_tags(&tags).is_ok());
        tags.insert("bad:key".into(), "x".into());
        assert!(check_tags(&tags).is_err());
        let perms = vec![Permission {
            principal: "ops".into(),
            access: Access::Manage,
        }];
        assert!(check_permissions(&perms).is_ok());
        assert!(
            check_permissions(&[Permission {
                principal: String::new(),
                access: Access::Read
            }])
            .is_err()
        );
    }

    #[test]
    fn timestamps() {
        assert!(check_timestamp(0).is_ok());
        assert!(check_timestamp(-1).is_err());
        assert!(check_timestamp(MAX_TIMESTAMP + 1).is_err());
    }
}
