//! The endpoint formats sources share: a JSON (or TOML) object
//! `{"address": "host:port", "weight": 2, "metadata": {…}}`, or a bare `"host:port"`;
//! and the check every discovered address and weight passes before it reaches a balancer.

use crate::config::{check_address, check_weight, TargetConfig};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// One endpoint as a source writes it. `metadata` is accepted and ignored; other keys are
/// errors, so a misspelt `adress` is reported rather than read as a missing address.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub address: String,
    #[serde(default = "one")]
    pub weight: i64,
    #[serde(default)]
    pub metadata: Option<IgnoredAny>,
}

fn one() -> i64 {
    1
}

impl Entry {
    /// The endpoint, if the address and weight are usable.
    pub fn check(&self) -> Result<TargetConfig, String> {
        check(&self.address, self.weight)
    }
}

/// Checks a discovered address and weight with the same rules as static targets.
pub fn check(address: &str, weight: i64) -> Result<TargetConfig, String> {
    check_address(address)?;
    let w = u32::try_from(weight).map_err(|_| format!("weight {weight} is out of range"))?;
    check_weight(w)?;
    Ok(TargetConfig {
        address: address.to_string(),
        weight: w,
    })
}

/// `host:port` for a host that may be a bare IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A key-value store's value: a JSON endpoint object, a JSON string `"host:port"`, or the
/// plain text `host:port`.
pub fn parse_value(value: &[u8]) -> Result<TargetConfig, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "value is not UTF-8".to_string())?
        .trim();
    if text.starts_with('{') {
        let e: Entry = serde_json::from_str(text).map_err(|e| format!("bad endpoint JSON: {e}"))?;
        e.check()
    } else if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|e| format!("bad JSON string: {e}"))?;
        check(&s, 1)
    } else if text.is_empty() {
        Err("value is empty".into())
    } else {
        check(text, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let t = parse_value(br#"{"address":"10.0.0.1:80","weight":3,"metadata":{"zone":"a"}}"#)
            .unwrap();
        assert_eq!((t.address.as_str(), t.weight), ("10.0.0.1:80", 3));
        assert_eq!(parse_value(b"\"h:1\"").unwrap().address, "h:1");
        assert_eq!(parse_value(b" [::1]:8080\n").unwrap().address, "[::1]:8080");
        assert_eq!(parse_value(br#"{"address":"a:1"}"#).unwrap().weight, 1);
        for (bad, why) in [
            (&br#"{"adress":"a:1"}"#[..], "unknown field"),
            (b"{\"address\":\"a:1\",\"weight\":0}", "out of range"),
            (b"{\"address\":\"a:1\",\"weight\":-2}", "out of range"),
            (b"nowhere", "not HOST:PORT"),
            (b"a:0", "not HOST:PORT"),
            (b"", "empty"),
            (b"{\"address\":", "bad endpoint JSON"),
        ] {
            let e = parse_value(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("[::1]", 80), "[::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
    }
}
