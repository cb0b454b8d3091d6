//! `discovery = { kind = "zookeeper", … }`: the keys as written and their validation into
//! [`ZookeeperConfig`].

use crate::config::discovery::source_keys;
use crate::config::section::Section;
use crate::config::units::Dur;
use crate::config::ConfigError;
use std::time::Duration;

source_keys! {
    /// `kind = "zookeeper"`, as written.
    struct RawZookeeper {
        /// `servers = "zk1:2181,zk2:2181"`: a ZooKeeper connect string.
        servers: String,
        /// `path = "/services/chat"`: the znode whose children are the endpoints.
        path: String,
        /// `session_timeout = "10s"`
        session_timeout: Dur,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZookeeperConfig {
    /// Connect string, `host:port[,host:port…][/chroot]`.
    pub servers: String,
    /// The znode whose children are the endpoints.
    pub path: String,
    pub session_timeout: Duration,
}

impl ZookeeperConfig {
    /// What is watched, for logs and error messages.
    pub fn describe(&self) -> String {
        format!("zookeeper {}", self.path)
    }
}

pub(crate) fn validate(cx: &Section<'_>, r: RawZookeeper) -> Result<ZookeeperConfig, ConfigError> {
    let servers = cx.required(r.servers, "servers", "discovery kind `zookeeper`")?;
    let servers = cx.non_empty(servers, "servers")?;
    let path = cx.required(r.path, "path", "discovery kind `zookeeper`")?;
    let p = path.get_ref();
    if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("//") {
        return Err(cx.error(
            path.span(),
            "path",
            format!("`{p}` is not a znode path (e.g. \"/services/chat\")"),
        ));
    }
    Ok(ZookeeperConfig {
        servers,
        path: path.into_inner(),
        session_timeout: cx
            .between(
                &r.session_timeout,
                "session_timeout",
                Dur::millis(100)..=Dur::secs(600),
            )?
            .map_or(Duration::from_secs(10), |d| d.0),
    })
}
