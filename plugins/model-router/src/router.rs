//! Config parsing and body inspection. No bindings.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::glob::Glob;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: Option<Vec<String>>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
}

pub struct Config {
    pub patterns: Vec<Glob>,
    pub field: String,
}

/// Why the predicate said no, for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotJson,
    NoField,
    NoMatch(String),
}

impl Config {
    pub fn from_json(json: &str) -> Result<Config, String> {
        let raw: RawConfig = support::parse_config(json)?;
        let models = raw
            .models
            .ok_or("`models` is required: a list of glob patterns such as \"gpt-*\"")?;
        if models.is_empty() {
            return Err("`models` must list at least one pattern".into());
        }
        let patterns = models
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Glob::new(p, raw.case_insensitive).map_err(|e| format!("models[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let field = raw.field.unwrap_or_else(|| "model".into());
        if field.is_empty() {
            return Err("`field` must be a non-empty member name".into());
        }
        Ok(Config { patterns, field })
    }

    /// Whether the body's field matches one of the patterns.
    pub fn check(&self, body: &[u8]) -> Result<(), Miss> {
        let model = field_of(body, &self.field)?.ok_or(Miss::NoField)?;
        if self.patterns.iter().any(|p| p.matches(&model)) {
            Ok(())
        } else {
            Err(Miss::NoMatch(model))
        }
    }
}

/// Reads one top-level string member of a JSON object, skipping everything else without
/// building it (bodies of chat requests can be large).
fn field_of(body: &[u8], field: &str) -> Result<Option<String>, Miss> {
    struct Seed<'a>(&'a str);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == self.0 && found.is_none() {
                    // A non-string value counts as "no field".
                    found = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(s) => Some(s),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Seed(field)
        .deserialize(&mut de)
        .map_err(|_| Miss::NotJson)?;
    de.end().map_err(|_| Miss::NotJson)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_model_field() {
        let c = Config::from_json(r#"{"models": ["gpt-*", "o1*"]}"#).unwrap();
        assert_eq!(
            c.check(br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#),
            Ok(())
        );
        assert_eq!(c.check(br#"{"messages": [], "model": "o1-mini"}"#), Ok(()));
        assert_eq!(
            c.check(br#"{"model": "llama-3"}"#),
            Err(Miss::NoMatch("llama-3".into()))
        );
        assert_eq!(c.check(br#"{"messages": []}"#), Err(Miss::NoField));
        assert_eq!(c.check(br#"{"model": 4}"#), Err(Miss::NoField));
        assert_eq!(
            c.check(br#"{"nested": {"model": "gpt-4"}}"#),
            Err(Miss::NoField)
        );
        assert_eq!(c.check(b"not json"), Err(Miss::NotJson));
        assert_eq!(c.check(br#"["gpt-4"]"#), Err(Miss::NotJson));
        assert_eq!(
            c.check(br#"{"model": "gpt-4"} trailing"#),
            Err(Miss::NotJson)
        );
        assert_eq!(c.check(b""), Err(Miss::NotJson));
        // Escaped strings in keys and values.
        assert_eq!(c.check(br#"{"mod\u0065l": "gpt-\u0034"}"#), Ok(()));
    }

    #[test]
    fn field_and_case_options() {
        let c = Config::from_json(
            r#"{"models": ["LLAMA-*"], "field": "engine", "case_insensitive": true}"#,
        )
        .unwrap();
        assert_eq!(
            c.check(br#"{"engine": "llama-3", "model": "gpt-4"}"#),
            Ok(())
        );
        assert_eq!(c.check(br#"{"model": "llama-3"}"#), Err(Miss::NoField));
    }

    #[test]
    fn bad_configs_say_why() {
        let err = |j: &str| Config::from_json(j).err().unwrap();
        assert!(err("{}").contains("`models` is required"));
        assert!(err(r#"{"models": []}"#).contains("at least one"));
        assert!(err(r#"{"models": ["gpt-*", ""]}"#).contains("models[1]: empty pattern"));
        assert!(err(r#"{"models": "gpt-*"}"#).contains("invalid type"));
        assert!(err(r#"{"models": ["a"], "field": ""}"#).contains("`field`"));
        assert!(err(r#"{"model": ["a"]}"#).contains("unknown field `model`"));
    }
}
