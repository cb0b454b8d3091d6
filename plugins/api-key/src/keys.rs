//! Config parsing and key lookup; no bindings, unit-tested natively.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    keys: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    hide_credentials: bool,
}

struct Entry {
    digest: [u8; 32],
    consumer: Option<String>,
}

/// A validated configuration.
pub struct ApiKeys {
    entries: Vec<Entry>,
    /// Lower-case header name.
    pub header: String,
    /// Query parameter name, when keys may come in the query.
    pub query: Option<String>,
    pub hide_credentials: bool,
}

/// Where a presented key was found.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
}

/// The outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Key found and known; the consumer, if the key has one.
    Allow(Option<String>, Source),
    Missing,
    Invalid,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let raw: RawConfig = support::parse_config(json)?;
        let keys = raw
            .keys
            .ok_or("`keys` is required: a list of keys or {key, consumer} tables")?;
        if keys.is_empty() {
            return Err("`keys` must list at least one key".into());
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            let (key, consumer) = match k {
                serde_json::Value::String(s) => (s.as_str(), None),
                serde_json::Value::Object(map) => {
                    if let Some(bad) = map.keys().find(|f| *f != "key" && *f != "consumer") {
                        return Err(format!(
                            "keys[{i}]: unknown field `{bad}`, expected `key` or `consumer`"
                        ));
                    }
                    let key = map
                        .get("key")
                        .and_then(|v| v.as_str())
                        .ok_or(format!("keys[{i}]: `key` (a string) is required"))?;
                    let consumer = match map.get("consumer") {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(c)) if !c.is_empty() => Some(c.clone()),
                        Some(_) => {
                            return Err(format!("keys[{i}]: `consumer` must be a non-empty string"));
                        }
                    };
                    (key, consumer)
                }
                _ => {
                    return Err(format!(
                        "keys[{i}]: expected a string or a {{key, consumer}} table"
                    ));
                }
            };
            if key.is_empty() {
                return Err(format!("keys[{i}]: the key is empty"));
            }
            if !support::is_valid_header_value(key) {
                return Err(format!(
                    "keys[{i}]: the key holds whitespace at its ends or control characters"
                ));
            }
            if !seen.insert(key.to_string()) {
                return Err(format!("keys[{i}]: duplicate key"));
            }
            entries.push(Entry {
                digest: digest(key.as_bytes()),
                consumer,
            });
        }
        let header =
            support::config_header_name("`header`", raw.header.as_deref().unwrap_or("x-api-key"))?;
        if support::is_managed_header(&header) {
            return Err(format!("`header`: {header:?} is managed by the gateway"));
        }
        let query = match raw.query {
            Some(q) if q.is_empty() => {
                return Err("`query` must be a non-empty parameter name".into());
            }
            q => q,
        };
        Ok(ApiKeys {
            entries,
            header,
            query,
            hide_credentials: raw.hide_credentials,
        })
    }

    /// Looks a presented key up. Runs in time independent of which key (if any) matches.
    pub fn lookup(&self, presented: &[u8]) -> Option<Option<&str>> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = d.ct_eq(&e.digest);
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        bool::from(found).then(|| self.entries[index as usize].consumer.as_deref())
    }

    /// Decides given the header value and query string of a request.
    pub fn decide(&self, header: Option<&str>, query: Option<&str>) -> Outcome {
        let (presented, source) = match (header, &self.query, query) {
            (Some(h), _, _) => (h.trim().as_bytes().to_vec(), Source::Header),
            (None, Some(name), Some(q)) => match support::query_param(q, name) {
                Some(v) => (v, Source::Query),
                None => return Outcome::Missing,
            },
            _ => return Outcome::Missing,
        };
        if presented.is_empty() {
            return Outcome::Missing;
        }
        match self.lookup(&presented) {
            Some(consumer) => Outcome::Allow(consumer.map(str::to_string), source),
            None => Outcome::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{"keys": [{"key": "k-123", "consumer": "alice"}, {"key": "k-456"}, "k-789"],
                          "query": "api_key"}"#;

    #[test]
    fn allows_known_keys_with_consumers() {
        let c = ApiKeys::from_json(CFG).unwrap();
        assert_eq!(c.header, "x-api-key");
        assert_eq!(
            c.decide(Some("k-123"), None),
            Outcome::Allow(Some("alice".into()), Source::Header)
        );
        assert_eq!(
            c.decide(Some("k-456"), None),
            Outcome::Allow(None, Source::Header)
        );
        assert_eq!(
            c.decide(None, Some("x=1&api_key=k-789")),
            Outcome::Allow(None, Source::Query)
        );
        assert_eq!(
            c.decide(None, Some("api_key=k%2D123")),
            Outcome::Allow(Some("alice".into()), Source::Query)
        );
    }

    #[test]
    fn refuses_missing_and_wrong_keys() {
        let c = ApiKeys::from_json(CFG).unwrap();
        assert_eq!(c.decide(None, None), Outcome::Missing);
        assert_eq!(c.decide(Some(""), None), Outcome::Missing);
        assert_eq!(c.decide(None, Some("other=k-123")), Outcome::Missing);
        assert_eq!(c.decide(Some("k-12"), None), Outcome::Invalid);
        assert_eq!(c.decide(Some("k-1234"), None), Outcome::Invalid);
        assert_eq!(c.decide(Some("K-123"), None), Outcome::Invalid);
        // The header wins over the query.
        assert_eq!(
            c.decide(Some("nope"), Some("api_key=k-123")),
            Outcome::Invalid
        );
    }

    #[test]
    fn query_is_off_by_default() {
        let c = ApiKeys::from_json(r#"{"keys": ["k"], "header": "X-Key"}"#).unwrap();
        assert_eq!(c.header, "x-key");
        assert_eq!(c.decide(None, Some("api_key=k")), Outcome::Missing);
    }

    #[test]
    fn bad_configs_say_why() {
        let err = |j: &str| ApiKeys::from_json(j).err().unwrap();
        assert!(err("{}").contains("`keys` is required"));
        assert!(err(r#"{"keys": []}"#).contains("at least one"));
        assert!(err(r#"{"keys": [""]}"#).contains("empty"));
        assert!(err(r#"{"keys": ["a", "a"]}"#).contains("duplicate"));
        assert!(err(r#"{"keys": [{"consumer": "x"}]}"#).contains("`key`"));
        assert!(err(r#"{"keys": [{"key": "a", "user": "x"}]}"#).contains("unknown field `user`"));
        assert!(err(r#"{"keys": [3]}"#).contains("keys[0]"));
        assert!(
            err(r#"{"keys": ["a"], "header": "bad header"}"#).contains("not a valid header name")
        );
        assert!(err(r#"{"keys": ["a"], "headers": "x"}"#).contains("unknown field `headers`"));
        assert!(err(r#"{"keys": ["a"], "query": ""}"#).contains("`query`"));
    }
}
