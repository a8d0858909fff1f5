//! The optional TOML configuration file and small value parsers shared by the subcommands.
//! Precedence is flag, then `WEST_*` environment (both through clap), then this file, then
//! the built-in default.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads a TOML file into `T`, or `T::default()` when no file is given.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Parses `30d`, `10m`, `90s`, `2h` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m, h or d"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?} has unit {unit:?}; use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The promise of the README, for one subcommand's flags (`cmd`): every long flag but
    /// `--config` and hidden ones has the variable `WEST_<FLAG>` and is a key of
    /// `full_file`, or one of `excluded_keys` (keys that exclude one of the full file's).
    pub(crate) fn assert_flags_variables_and_keys(
        cmd: &clap::Command,
        full_file: &str,
        excluded_keys: &[&str],
    ) {
        let mut flags = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || long == "config" {
                continue;
            }
            let key = long.replace('-', "_");
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let expected = format!("WEST_{}", key.to_uppercase());
            assert_eq!(env.as_deref(), Some(expected.as_str()), "--{long}");
            flags.push(key);
        }
        let table: toml::Table = toml::from_str(full_file).expect("the full file is TOML");
        let mut keys: Vec<String> = table.keys().cloned().collect();
        keys.extend(excluded_keys.iter().map(|k| (*k).to_owned()));
        flags.sort();
        keys.sort();
        assert_eq!(flags, keys, "the flags and the keys of a full file");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10y").is_err());
    }
}
