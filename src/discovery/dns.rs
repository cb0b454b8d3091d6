//! DNS discovery (hickory-resolver): the A/AAAA records of a name with a configured port,
//! or SRV records (only the lowest priority present is used; the SRV weight becomes the
//! balancer weight). Re-resolved when the answer's TTL runs out, clamped to
//! `min_refresh`..`max_refresh`. An answer with no usable record is a failure (the last
//! good set stays), since a transient NXDOMAIN is far more common than a service that
//! really has no instance.

use super::{endpoint, Backoff, Sink};
use crate::config::discovery::dns::{DnsConfig, DnsQuery, IpFamily};
use crate::config::{TargetConfig, MAX_WEIGHT};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub(super) async fn run(cfg: DnsConfig, mut sink: Sink) {
    let mut backoff = Backoff::new(cfg.min_refresh, cfg.max_refresh);
    let resolver = loop {
        match build_resolver(&cfg) {
            Ok(r) => break r,
            Err(e) => {
                sink.failed(format!("cannot set up the resolver: {e}"));
                tokio::time::sleep(backoff.fail()).await;
            }
        }
    };
    loop {
        // Every refresh asks the server: the TTL is honoured by when we ask, not by a cache.
        resolver.clear_cache();
        let wait = match resolve(&resolver, &cfg.query).await {
            Ok((found, valid_until)) => {
                if !sink.update(found) {
                    return;
                }
                backoff.reset();
                valid_until
                    .saturating_duration_since(Instant::now())
                    .clamp(cfg.min_refresh, cfg.max_refresh)
            }
            Err(e) => {
                sink.failed(e);
                backoff.fail()
            }
        };
        tokio::time::sleep(wait).await;
        if !sink.alive() {
            return;
        }
    }
}

fn build_resolver(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    let strategy = match cfg.query {
        DnsQuery::Host {
            family: IpFamily::V4,
            ..
        } => LookupIpStrategy::Ipv4Only,
        DnsQuery::Host {
            family: IpFamily::V6,
            ..
        } => LookupIpStrategy::Ipv6Only,
        _ => LookupIpStrategy::Ipv4AndIpv6,
    };
    let mut builder = match cfg.resolver {
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            let mut b = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            );
            // A configured server is asked directly, without /etc/hosts.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = strategy;
    opts.timeout = Duration::from_secs(2);
    builder.build().map_err(|e| e.to_string())
}

/// One resolution: the endpoints and until when the answer is valid.
async fn resolve(
    resolver: &TokioResolver,
    query: &DnsQuery,
) -> Result<(Vec<TargetConfig>, Instant), String> {
    match query {
        DnsQuery::Host { name, port, .. } => {
            let ips = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| format!("resolving {name}: {e}"))?;
            let found: Vec<TargetConfig> = ips
                .iter()
                .map(|ip| TargetConfig {
                    address: SocketAddr::new(ip, *port).to_string(),
                    weight: 1,
                })
                .collect();
            if found.is_empty() {
                return Err(format!("{name} has no A/AAAA records"));
            }
            Ok((found, ips.valid_until()))
        }
        DnsQuery::Srv { name } => {
            let srv = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| format!("resolving SRV {name}: {e}"))?;
            let mut valid_until = srv.valid_until();
            let records: Vec<_> = srv
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    // A target of "." says the service is decidedly not available here.
                    RData::SRV(s) if !s.target.is_root() => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let Some(lowest) = records.iter().map(|s| s.priority).min() else {
                return Err(format!("SRV {name} lists no target"));
            };
            // Addresses the server sent along (additional section), by target name.
            let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
            for r in srv.additionals() {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                glue.entry(lower(&r.name.to_ascii())).or_default().push(ip);
            }
            let mut found = Vec::new();
            for s in records.iter().filter(|s| s.priority == lowest) {
                let target = s.target.to_ascii();
                let ips = match glue.get(&lower(&target)) {
                    Some(ips) => ips.clone(),
                    None => {
                        let ips = resolver
                            .lookup_ip(s.target.clone())
                            .await
                            .map_err(|e| format!("resolving SRV target {target}: {e}"))?;
                        valid_until = valid_until.min(ips.valid_until());
                        ips.iter().collect()
                    }
                };
                // SRV weights are 0..=65535 and relative; 0 means "rarely", so it is 1 here.
                let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
                for ip in ips {
                    found.push(endpoint::check(
                        &SocketAddr::new(ip, s.port).to_string(),
                        weight.into(),
                    )?);
                }
            }
            if found.is_empty() {
                return Err(format!("SRV {name}: no target has an address"));
            }
            Ok((found, valid_until))
        }
    }
}

fn lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
