//! `discovery = { kind = "…", … }` of an upstream: the table as written and its validation
//! into [`DiscoveryConfig`]. This file only dispatches on `kind`; each source declares its
//! keys, validates them and defines its validated config in its own file here
//! (`config/discovery/<source>.rs`), as the resilience sections do in `config/resilience.rs`.
//!
//! Adding a source: its config file here (keys with [`source_keys!`], `validate`,
//! `describe`), a line in [`KINDS`] and a variant here; its runtime in
//! `src/discovery/<source>.rs` and its `run` in `discovery::spawn`.

pub mod consul;
pub mod dns;
pub mod etcd;
pub mod file;
pub mod zookeeper;

use super::error::Source;
use super::section::Section;
use super::ConfigError;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::sync::LazyLock;
use toml::Spanned;

/// Where an upstream's endpoints come from, when not from static `targets`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryConfig {
    Dns(dns::DnsConfig),
    File(file::FileConfig),
    Etcd(etcd::EtcdConfig),
    Zookeeper(zookeeper::ZookeeperConfig),
    Consul(consul::ConsulConfig),
}

/// Each kind and the keys it accepts besides `kind`.
const KINDS: &[(&str, &[&str])] = &[
    ("dns", dns::RawDns::KEYS),
    ("file", file::RawFile::KEYS),
    ("etcd", etcd::RawEtcd::KEYS),
    ("zookeeper", zookeeper::RawZookeeper::KEYS),
    ("consul", consul::RawConsul::KEYS),
];

impl DiscoveryConfig {
    /// `dns`, `file`, … as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryConfig::Dns(_) => "dns",
            DiscoveryConfig::File(_) => "file",
            DiscoveryConfig::Etcd(_) => "etcd",
            DiscoveryConfig::Zookeeper(_) => "zookeeper",
            DiscoveryConfig::Consul(_) => "consul",
        }
    }

    /// What is asked of which server, for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            DiscoveryConfig::Dns(c) => c.describe(),
            DiscoveryConfig::File(c) => c.describe(),
            DiscoveryConfig::Etcd(c) => c.describe(),
            DiscoveryConfig::Zookeeper(c) => c.describe(),
            DiscoveryConfig::Consul(c) => c.describe(),
        }
    }
}

/// Validates `discovery = {…}`; `cx` is the discovery table.
pub(crate) fn validate(
    cx: &Section<'_>,
    raw: RawDiscovery,
) -> Result<DiscoveryConfig, ConfigError> {
    let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    let Some(kind) = raw.kind else {
        return Err(cx.error_at_table(
            "kind",
            format!("discovery needs `kind` (one of {})", kinds.join(", ")),
        ));
    };
    let Some((_, allowed)) = KINDS.iter().find(|(k, _)| *k == kind.get_ref()) else {
        return Err(cx.error(
            kind.span(),
            "kind",
            format!(
                "unknown discovery kind `{}` (expected one of {})",
                kind.get_ref(),
                kinds.join(", ")
            ),
        ));
    };
    // Keys that belong to other kinds are errors, not silently ignored.
    for key in all_keys() {
        let Some((_, v)) = raw.keys.iter().find(|(k, _)| k == key) else {
            continue;
        };
        if !allowed.contains(key) {
            return Err(cx.error(
                v.span(),
                key,
                format!(
                    "`{key}` does not apply to discovery kind `{}` (its keys: {})",
                    kind.get_ref(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    let mut keys = Keys {
        src: cx.src,
        entries: raw.keys,
    };
    Ok(match kind.get_ref().as_str() {
        "dns" => DiscoveryConfig::Dns(dns::validate(cx, dns::RawDns::read(&mut keys)?)?),
        "file" => DiscoveryConfig::File(file::validate(cx, file::RawFile::read(&mut keys)?)?),
        "etcd" => DiscoveryConfig::Etcd(etcd::validate(cx, etcd::RawEtcd::read(&mut keys)?)?),
        "zookeeper" => DiscoveryConfig::Zookeeper(zookeeper::validate(
            cx,
            zookeeper::RawZookeeper::read(&mut keys)?,
        )?),
        "consul" => {
            DiscoveryConfig::Consul(consul::validate(cx, consul::RawConsul::read(&mut keys)?)?)
        }
        _ => unreachable!("kind checked against KINDS"),
    })
}

/// `kind`, then every key of every kind, in the order of [`KINDS`]: the keys the table may
/// have at all.
fn all_keys() -> &'static [&'static str] {
    static ALL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let mut all = vec!["kind"];
        for key in KINDS.iter().flat_map(|(_, keys)| keys.iter()) {
            if !all.contains(key) {
                all.push(key);
            }
        }
        all
    });
    &ALL
}

/// The discovery table as written: `kind`, and every other key with its value and span.
/// Which keys a kind takes is only known once `kind` is, so the values are kept as TOML
/// values and read into their types by the source ([`Keys`]); a key that no kind has is
/// refused while parsing, as `#[serde(deny_unknown_fields)]` would.
pub(crate) struct RawDiscovery {
    /// `kind = "dns" | "file" | "etcd" | "zookeeper" | "consul"`
    kind: Option<Spanned<String>>,
    keys: Vec<(String, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for RawDiscovery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A key some kind has (an unknown one fails while the parser knows its place).
        struct Key(String);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("field identifier")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Key, E> {
                        match all_keys().contains(&s) {
                            true => Ok(Key(s.to_string())),
                            false => Err(E::unknown_field(s, all_keys())),
                        }
                    }
                }
                d.deserialize_identifier(V)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDiscovery;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct RawDiscovery")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDiscovery, A::Error> {
                let mut raw = RawDiscovery {
                    kind: None,
                    keys: Vec::new(),
                };
                while let Some(Key(key)) = map.next_key()? {
                    if key == "kind" {
                        raw.kind = Some(map.next_value()?);
                    } else {
                        raw.keys.push((key, map.next_value()?));
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_struct("RawDiscovery", all_keys(), V)
    }
}

/// The keys of a discovery table once its kind is known; a source's `read` (made by
/// [`source_keys!`]) takes its keys out, each read into its type.
pub(crate) struct Keys<'a> {
    src: &'a Source<'a>,
    entries: Vec<(String, Spanned<toml::Value>)>,
}

impl Keys<'_> {
    /// The value of `key`, if present; a value of the wrong type is an error at the value,
    /// worded as the parser words it.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<Spanned<T>>, ConfigError> {
        let Some(i) = self.entries.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        let (_, v) = self.entries.swap_remove(i);
        let span = v.span();
        match T::deserialize(v.into_inner()) {
            Ok(t) => Ok(Some(Spanned::new(span, t))),
            Err(e) => Err(self.src.value_error(span, e.message().trim())),
        }
    }
}

/// An `http://host:port` base address (etcd members, the Consul agent); a bare
/// `host:port` gets `http://`.
pub(crate) fn http_base(
    cx: &Section<'_>,
    v: &Spanned<String>,
    key: &str,
) -> Result<http::Uri, ConfigError> {
    let s = v.get_ref().trim();
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let bad = |why: &str| {
        cx.error(
            v.span(),
            key,
            format!("`{s}` {why} (expected HOST:PORT or http://HOST:PORT)"),
        )
    };
    let uri: http::Uri = with_scheme.parse().map_err(|_| bad("is not an address"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("is not supported: only plain http"));
    }
    let Some(auth) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if auth.port_u16().is_none() || !matches!(uri.path(), "" | "/") {
        return Err(bad("needs a port and no path"));
    }
    Ok(http::Uri::builder()
        .scheme("http")
        .authority(auth.clone())
        .path_and_query("/")
        .build()
        .expect("scheme and authority are valid"))
}

/// Declares a source's keys as written: a struct with one `Option<Spanned<T>>` field per
/// key (doc comments show the TOML form), `KEYS` (their names, in order) and `read`,
/// which takes each from the discovery table.
macro_rules! source_keys {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub(crate) struct $name {
            $( $(#[$field_meta])* $field: Option<toml::Spanned<$ty>>, )*
        }

        impl $name {
            pub(crate) const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            pub(crate) fn read(
                keys: &mut $crate::config::discovery::Keys<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok($name {
                    $( $field: keys.take(stringify!($field))?, )*
                })
            }
        }
    };
}
pub(crate) use source_keys;
