//! File discovery: a TOML or JSON file listing endpoints, read every `interval` and applied
//! when its content changes. Polling the content (rather than inotify) follows files
//! replaced by rename, symlink swaps (Kubernetes ConfigMaps) and network filesystems
//! alike. A file that cannot be read or parsed is reported and the last good set stays.

use super::endpoint::{self, Entry};
use super::Sink;
use crate::config::discovery::file::{FileConfig, FileFormat};
use crate::config::TargetConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// `{ endpoints = [ … ] }` in TOML or JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    endpoints: Vec<Entry>,
}

/// One target group of Prometheus' `file_sd` JSON format, `[{"targets": [..], "labels": {..}}]`;
/// a `weight` label sets the weight of the group's targets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetGroup {
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

pub(super) async fn run(cfg: FileConfig, mut sink: Sink) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The content last acted on, applied or rejected: unchanged content is not re-read.
    let mut last: Option<Vec<u8>> = None;
    loop {
        ticker.tick().await;
        if !sink.alive() {
            return;
        }
        let path = &cfg.path;
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                sink.failed(format!("cannot read {}: {e}", path.display()));
                // Whatever comes back is applied, even the content last seen.
                last = None;
                continue;
            }
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        // A writer may be half-way through: act only on content that reads the same twice.
        tokio::time::sleep(cfg.interval.min(Duration::from_millis(50))).await;
        if tokio::fs::read(path).await.ok().as_ref() != Some(&bytes) {
            continue;
        }
        last = Some(bytes);
        let parsed = parse(last.as_deref().unwrap_or_default(), cfg.format);
        match parsed {
            Ok(entries) => {
                let found = sink.usable(entries);
                if !sink.update(found) {
                    return;
                }
            }
            Err(e) => sink.failed(format!("{}: {e}", path.display())),
        }
    }
}

type Parsed = Vec<(String, Result<Option<TargetConfig>, String>)>;

/// The file's entries, each named for messages and checked; `Err` for a file that does not
/// parse as a whole.
fn parse(bytes: &[u8], format: FileFormat) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let entries = match format {
        FileFormat::Toml => {
            toml::from_str::<EndpointsFile>(text)
                .map_err(|e| e.to_string().trim_end().replace('\n', " "))?
                .endpoints
        }
        FileFormat::Json if text.trim_start().starts_with('[') => {
            let groups: Vec<TargetGroup> =
                serde_json::from_str(text).map_err(|e| format!("not file_sd JSON: {e}"))?;
            return Ok(groups
                .into_iter()
                .flat_map(|g| {
                    let weight = g.labels.get("weight").cloned();
                    g.targets.into_iter().map(move |t| {
                        let w = match &weight {
                            None => Ok(1),
                            Some(w) => w
                                .parse::<i64>()
                                .map_err(|_| format!("weight label `{w}` is not a number")),
                        };
                        let r = w.and_then(|w| endpoint::check(&t, w)).map(Some);
                        (t, r)
                    })
                })
                .collect());
        }
        FileFormat::Json => {
            serde_json::from_str::<EndpointsFile>(text)
                .map_err(|e| e.to_string())?
                .endpoints
        }
    };
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (format!("endpoints[{i}] {}", e.address), e.check().map(Some)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str, format: FileFormat) -> Vec<(String, u32)> {
        parse(text.as_bytes(), format)
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten())
            .map(|t| (t.address, t.weight))
            .collect()
    }

    #[test]
    fn toml_and_json() {
        let toml = "[[endpoints]]\naddress = \"10.0.0.1:80\"\nweight = 2\n[endpoints.metadata]\nzone = \"a\"\n\n[[endpoints]]\naddress = \"10.0.0.2:80\"\n";
        assert_eq!(
            ok(toml, FileFormat::Toml),
            [("10.0.0.1:80".into(), 2), ("10.0.0.2:80".into(), 1)]
        );
        let json = r#"{"endpoints": [{"address": "h:1", "weight": 5, "metadata": {"v": [1]}}]}"#;
        assert_eq!(ok(json, FileFormat::Json), [("h:1".into(), 5)]);
        let sd = r#"[{"targets": ["a:1", "b:2"], "labels": {"weight": "3", "env": "x"}}, {"targets": ["c:3"]}]"#;
        assert_eq!(
            ok(sd, FileFormat::Json),
            [("a:1".into(), 3), ("b:2".into(), 3), ("c:3".into(), 1)]
        );
        assert_eq!(ok("endpoints = []", FileFormat::Toml), []);
    }

    #[test]
    fn bad_entries_are_named_and_bad_files_rejected() {
        let parsed = parse(
            br#"{"endpoints": [{"address": "nowhere"}, {"address": "h:1"}]}"#,
            FileFormat::Json,
        )
        .unwrap();
        assert!(parsed[0].1.as_ref().unwrap_err().contains("not HOST:PORT"));
        assert_eq!(parsed[0].0, "endpoints[0] nowhere");
        assert!(parsed[1].1.is_ok());
        for (bad, format) in [
            ("{\"endpoints\": [{\"address\": \"h:1\"}", FileFormat::Json),
            ("[[endpoints]]\naddress = ", FileFormat::Toml),
            ("[[endpoints]]\nadress = \"h:1\"", FileFormat::Toml),
            ("endpoint = []", FileFormat::Toml),
            ("", FileFormat::Json),
        ] {
            assert!(parse(bad.as_bytes(), format).is_err(), "{bad}");
        }
    }
}
