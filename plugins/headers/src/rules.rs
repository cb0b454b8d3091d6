//! Config parsing and rule application against an abstract header store. No bindings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// What the rules need from a request or response.
pub trait Headers {
    fn all(&self) -> Vec<(String, String)>;
    fn set(&self, name: &str, value: &str) -> Result<(), String>;
    fn append(&self, name: &str, value: &str) -> Result<(), String>;
    fn remove(&self, name: &str) -> Result<(), String>;
}

/// The rules for one side (request or response), in application order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub remove: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub request: Rules,
    pub response: Rules,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request: RawRules,
    #[serde(default)]
    response: RawRules,
}

fn name(side: &str, op: &str, n: &str) -> Result<String, String> {
    let n = support::config_header_name(&format!("{side}.{op}"), n)?;
    if support::is_managed_header(&n) {
        return Err(format!(
            "{side}.{op}: {n:?} is managed by the gateway and cannot be changed"
        ));
    }
    Ok(n)
}

fn value(side: &str, op: &str, n: &str, v: &str) -> Result<String, String> {
    if !support::is_valid_header_value(v) {
        return Err(format!(
            "{side}.{op}: the value for {n:?} holds control characters or whitespace at its ends"
        ));
    }
    Ok(v.to_string())
}

impl Rules {
    fn from_raw(side: &str, raw: RawRules) -> Result<Rules, String> {
        let mut r = Rules::default();
        for n in raw.remove {
            r.remove.push(name(side, "remove", &n)?);
        }
        for (from, to) in raw.rename {
            let (from, to) = (name(side, "rename", &from)?, name(side, "rename", &to)?);
            if from == to {
                return Err(format!("{side}.rename: {from:?} is renamed to itself"));
            }
            r.rename.push((from, to));
        }
        for (n, v) in raw.set {
            let n = name(side, "set", &n)?;
            let v = value(side, "set", &n, &v)?;
            r.set.push((n, v));
        }
        for (n, v) in raw.add {
            let n = name(side, "add", &n)?;
            let values = match v {
                Value::String(s) => vec![s],
                Value::Array(list) => list
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(format!("{side}.add: values for {n:?} must be strings")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(format!(
                        "{side}.add: the value for {n:?} must be a string or a list of strings"
                    ));
                }
            };
            for v in values {
                let v = value(side, "add", &n, &v)?;
                r.add.push((n.clone(), v));
            }
        }
        // Names given twice in different case (`X-A` and `x-a`) collapse; refuse that.
        for (op, names) in [
            ("remove", r.remove.clone()),
            ("rename", r.rename.iter().map(|p| p.0.clone()).collect()),
            ("set", r.set.iter().map(|p| p.0.clone()).collect()),
        ] {
            let mut sorted = names.clone();
            sorted.sort();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!("{side}.{op}: {:?} is listed twice", w[0]));
            }
        }
        Ok(r)
    }

    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    /// Applies the rules. A change the host refuses is reported through `warn` and the
    /// remaining rules still apply.
    pub fn apply(&self, h: &dyn Headers, warn: &mut dyn FnMut(String)) {
        let mut check = |what: &str, r: Result<(), String>| {
            if let Err(e) = r {
                warn(format!("{what}: {e}"));
            }
        };
        for n in &self.remove {
            check(&format!("remove {n}"), h.remove(n));
        }
        for (from, to) in &self.rename {
            {
                let all = h.all();
                let values: Vec<&str> = all
                    .iter()
                    .filter(|(n, _)| n == from)
                    .map(|(_, v)| v.as_str())
                    .collect();
                if values.is_empty() {
                    continue;
                }
                check(&format!("rename {from}"), h.remove(from));
                check(&format!("rename {from} to {to}"), h.remove(to));
                for v in values {
                    check(&format!("rename {from} to {to}"), h.append(to, v));
                }
            }
        }
        for (n, v) in &self.set {
            check(&format!("set {n}"), h.set(n, v));
        }
        for (n, v) in &self.add {
            check(&format!("add {n}"), h.append(n, v));
        }
    }
}

impl Config {
    pub fn from_json(json: &str) -> Result<Config, String> {
        let raw: RawConfig = support::parse_config(json)?;
        let cfg = Config {
            request: Rules::from_raw("request", raw.request)?,
            response: Rules::from_raw("response", raw.response)?,
        };
        if cfg.request.is_empty() && cfg.response.is_empty() {
            return Err(
                "no rules: give `request` and/or `response` with remove / rename / set / add"
                    .into(),
            );
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Mock(RefCell<Vec<(String, String)>>);

    impl Headers for Mock {
        fn all(&self) -> Vec<(String, String)> {
            self.0.borrow().clone()
        }
        fn set(&self, name: &str, value: &str) -> Result<(), String> {
            self.remove(name)?;
            self.append(name, value)
        }
        fn append(&self, name: &str, value: &str) -> Result<(), String> {
            if name == "x-refused" {
                return Err("refused".into());
            }
            self.0.borrow_mut().push((name.into(), value.into()));
            Ok(())
        }
        fn remove(&self, name: &str) -> Result<(), String> {
            self.0.borrow_mut().retain(|(n, _)| n != name);
            Ok(())
        }
    }

    fn mock(fields: &[(&str, &str)]) -> Mock {
        Mock(RefCell::new(
            fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn applies_in_order() {
        let cfg = Config::from_json(
            r#"{"request": {"remove": ["X-Internal"], "rename": {"x-old": "X-New"},
                            "set": {"x-env": "prod"}, "add": {"x-tag": ["a", "b"], "x-env": "extra"}}}"#,
        )
        .unwrap();
        assert!(cfg.response.is_empty());
        let h = mock(&[
            ("x-internal", "1"),
            ("x-old", "o1"),
            ("x-new", "gone"),
            ("x-old", "o2"),
            ("x-env", "dev"),
            ("keep", "k"),
        ]);
        let mut warnings = Vec::new();
        cfg.request.apply(&h, &mut |w| warnings.push(w));
        assert!(warnings.is_empty());
        assert_eq!(
            h.all(),
            [
                ("keep", "k"),
                ("x-new", "o1"),
                ("x-new", "o2"),
                ("x-env", "prod"),
                ("x-env", "extra"),
                ("x-tag", "a"),
                ("x-tag", "b")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn host_refusals_are_warnings() {
        let cfg =
            Config::from_json(r#"{"response": {"set": {"x-refused": "1", "x-ok": "2"}}}"#).unwrap();
        let h = mock(&[]);
        let mut warnings = Vec::new();
        cfg.response.apply(&h, &mut |w| warnings.push(w));
        assert_eq!(warnings, ["set x-refused: refused"]);
        assert_eq!(h.all(), [("x-ok".to_string(), "2".to_string())]);
    }

    #[test]
    fn bad_configs_say_why() {
        let err = |j: &str| Config::from_json(j).err().unwrap();
        assert!(err("{}").contains("no rules"));
        assert!(err(r#"{"request": {}}"#).contains("no rules"));
        assert!(
            err(r#"{"request": {"set": {"bad name": "x"}}}"#)
                .contains("request.set: \"bad name\" is not a valid header name")
        );
        assert!(
            err(r#"{"request": {"set": {"content-length": "1"}}}"#)
                .contains("managed by the gateway")
        );
        assert!(err(r#"{"response": {"remove": ["Transfer-Encoding"]}}"#).contains("managed"));
        assert!(err(r#"{"request": {"set": {"x": "a\r\nb"}}}"#).contains("control characters"));
        assert!(err(r#"{"request": {"add": {"x": 1}}}"#).contains("string or a list"));
        assert!(err(r#"{"request": {"add": {"x": ["a", 1]}}}"#).contains("must be strings"));
        assert!(err(r#"{"request": {"rename": {"x": "X"}}}"#).contains("to itself"));
        assert!(err(r#"{"request": {"set": {"x-a": "1", "X-A": "2"}}}"#).contains("listed twice"));
        assert!(err(r#"{"request": {"replace": {}}}"#).contains("unknown field `replace`"));
        assert!(err(r#"{"requests": {}}"#).contains("unknown field `requests`"));
    }
}
