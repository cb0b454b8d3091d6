//! Upgrades (WebSocket and whatever else a route's `upgrades` lists): which requests ask
//! for one, the handshake as forwarded to the HTTP/1.1 upstream, and what the upstream's
//! answer becomes. The connection the switch opens is `tunnel.rs`.
//!
//! - HTTP/1.1: `Connection: upgrade` + `Upgrade: P` (RFC 9110 §7.8). The client's
//!   hop-by-hop headers are stripped as for every request; for an upgrade the gateway puts
//!   `Connection: upgrade` and `Upgrade` (the protocols the route allows) back on the
//!   upstream request and the upstream's 101.
//! - HTTP/2: extended CONNECT with `:protocol` (RFC 8441): routed, authorized and logged
//!   as the GET it stands for, sent upstream as an HTTP/1.1 WebSocket handshake (with a
//!   `Sec-WebSocket-Key` of the gateway's, which HTTP/2 has none of); the upstream's 101
//!   becomes a 200 and the stream carries the bytes.
//!
//! A request asking for an upgrade the route does not allow is forwarded without it over
//! HTTP/1.1 (as nginx does without `proxy_set_header Upgrade`), and refused with 403 over
//! HTTP/2 (a CONNECT cannot be forwarded as anything else; Envoy answers 403 too). An
//! upgrade request with a body is forwarded without the upgrade (a server may ignore
//! `Upgrade`, RFC 9110 §7.8), so body bytes and tunnel bytes can never be confused. An
//! upstream that answers 101 to a request that did not ask for that upgrade is a 502.

use super::body::ResponseBody;
use super::context::{ClientRequest, RequestCtx};
use super::error::ProxyError;
use super::tunnel::{OpenSlot, Tunnel};
use super::{headers, RouteEntry};
use crate::upstream::ActiveGuard;
use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use std::time::Duration;
use tokio::sync::oneshot;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// An upgrade the client asked for, noted before its hop-by-hop headers are removed.
#[derive(Debug)]
pub struct Requested {
    /// The `Upgrade` value (HTTP/1.1), or `:protocol` (HTTP/2).
    protocols: HeaderValue,
    /// Asked with an HTTP/2 extended CONNECT.
    h2: bool,
}

/// Whether `req` asks for an upgrade. An HTTP/2 extended CONNECT becomes the GET it
/// stands for (RFC 8441 §5), so routes, plugins and the access log see a GET.
///
/// Boxed: it waits in every request's context until `forward` takes it, and few requests
/// have one.
pub fn requested(req: &mut Request<Incoming>) -> Option<Box<Requested>> {
    if req.version() == Version::HTTP_2 {
        if req.method() != Method::CONNECT {
            return None;
        }
        let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
        let protocols = HeaderValue::from_str(protocol.as_str()).ok()?;
        *req.method_mut() = Method::GET;
        return Some(Box::new(Requested {
            protocols,
            h2: true,
        }));
    }
    // hyper marks an HTTP/1.1 request that has an `Upgrade` field (or is a CONNECT) with
    // its `OnUpgrade`: one without it asks for nothing, and its `Connection` is not read
    // (a lookup by name costs ~90 instructions, and this runs on every request).
    if req.version() != Version::HTTP_11
        || req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_none()
        || !connection_has_upgrade(req.headers())
    {
        return None;
    }
    let mut upgrade = req.headers().get_all(header::UPGRADE).iter();
    let protocols = upgrade.next()?.clone();
    // Two `Upgrade` lines: ambiguous, not forwarded as an upgrade.
    upgrade.next().is_none().then(|| {
        Box::new(Requested {
            protocols,
            h2: false,
        })
    })
}

fn connection_has_upgrade(h: &http::HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The tokens of an `Upgrade` (or `Connection`) value.
fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// An upgrade being forwarded: what goes upstream, and what the switch needs.
pub struct Handshake {
    /// The protocols asked for that the route allows, as sent upstream.
    protocols: HeaderValue,
    h2: bool,
    client: OnUpgrade,
    slot: OpenSlot,
}

impl Handshake {
    /// The upgrade `requested` as this route forwards it: `None` when it is not forwarded
    /// (the route allows none of the protocols, or the request has a body).
    pub fn prepare(
        requested: Option<Box<Requested>>,
        route: &RouteEntry,
        req: &mut ClientRequest,
    ) -> Result<Option<Handshake>, ProxyError> {
        let Some(requested) = requested else {
            return Ok(None);
        };
        let Requested { protocols, h2 } = *requested;
        let allowed: Vec<&[u8]> = tokens(&protocols)
            .filter(|t| route.config.allows_upgrade(t))
            .collect();
        let has_body = req.body.buffered.as_ref().is_some_and(|b| !b.is_empty())
            || req.body.stream.as_ref().is_some_and(|b| !b.is_end_stream());
        let client = req.head.extensions.remove::<OnUpgrade>();
        let forwarded = match (allowed.is_empty(), has_body, client) {
            (false, false, Some(client)) => Some((allowed.join(&b", "[..]), client)),
            _ => None,
        };
        let Some((protocols_up, client)) = forwarded else {
            return match h2 {
                true => Err(ProxyError::UpgradeNotAllowed(
                    String::from_utf8_lossy(protocols.as_bytes()).into_owned(),
                )),
                false => Ok(None),
            };
        };
        let cap = route.config.tunnel.max_connections;
        let slot = OpenSlot::reserve(&route.metrics.tunnels.open, cap)
            .ok_or(ProxyError::TooManyUpgrades)?;
        Ok(Some(Handshake {
            protocols: HeaderValue::from_bytes(&protocols_up).expect("tokens of a header value"),
            h2,
            client,
            slot,
        }))
    }

    /// Puts the handshake on the upstream request (hop-by-hop headers are gone by now):
    /// `Connection: upgrade`, `Upgrade`, and for an HTTP/2 client the HTTP/1.1 form of
    /// its request — GET, and a `Sec-WebSocket-Key`.
    pub fn request_headers(&self, head: &mut http::request::Parts) {
        head.method = Method::GET;
        head.version = Version::HTTP_11;
        let h = &mut head.headers;
        h.insert(header::CONNECTION, UPGRADE_TOKEN);
        h.insert(header::UPGRADE, self.protocols.clone());
        if self.h2 && !h.contains_key(SEC_WEBSOCKET_KEY) {
            let key: [u8; 16] = [crate::hash::fast_rand(), crate::hash::fast_rand()]
                .map(u64::to_ne_bytes)
                .concat()
                .try_into()
                .expect("16 bytes");
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            h.insert(
                SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(&key).expect("base64 is a valid header value"),
            );
        }
        h.remove(header::CONTENT_LENGTH);
        head.extensions.clear();
    }

    /// Whether the upstream's answer is the switch (else it is answered as it is, and an
    /// HTTP/2 client gets a 502 for a 2xx: a 2xx to its CONNECT would open the stream).
    pub fn switched(&self, status: StatusCode) -> Result<bool, ProxyError> {
        match status {
            StatusCode::SWITCHING_PROTOCOLS => Ok(true),
            s if self.h2 && s.is_success() => Err(ProxyError::BadUpgrade(
                "upstream answered the WebSocket handshake without switching protocols",
            )),
            _ => Ok(false),
        }
    }

    /// The upstream switched: checks it switched to a protocol asked for, starts the
    /// tunnel on this worker and answers the client (101 with `Connection: upgrade` and
    /// `Upgrade`; 200 over HTTP/2).
    pub fn open(
        self,
        route: &RouteEntry,
        mut response: Response<crate::upstream::pool::PooledBody>,
        guard: ActiveGuard,
        ctx: &RequestCtx<'_>,
        drain_timeout: Duration,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let switched_to = response
            .headers()
            .get(header::UPGRADE)
            .filter(|v| {
                let mut t = tokens(v);
                let one = t.next();
                t.next().is_none()
                    && one
                        .is_some_and(|p| tokens(&self.protocols).any(|a| a.eq_ignore_ascii_case(p)))
            })
            .cloned()
            .ok_or(ProxyError::BadUpgrade(
                "upstream switched to a protocol that was not asked for",
            ))?;
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, _empty) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if self.h2 {
            parts.status = StatusCode::OK;
            parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
            parts.headers.remove(header::CONTENT_LENGTH);
        } else {
            parts.headers.insert(header::CONNECTION, UPGRADE_TOKEN);
            parts.headers.insert(header::UPGRADE, switched_to.clone());
        }
        let (log_tx, log_rx) = oneshot::channel();
        let tunnel = Tunnel {
            protocol: String::from_utf8_lossy(switched_to.as_bytes()).into(),
            client: self.client,
            upstream,
            bounds: route.config.tunnel,
            drain_timeout,
            metrics: route.metrics.tunnels.clone(),
            slot: self.slot,
            guard,
            lease: ctx.client.lease.as_ref().map(|lend| lend()),
            log: log_rx,
        };
        tokio::spawn(tunnel.run());
        Ok(Response::from_parts(parts, ResponseBody::switched(log_tx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_upgrade_is_a_token_of_any_connection_line() {
        let mut h = http::HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!connection_has_upgrade(&h));
        h.append(header::CONNECTION, HeaderValue::from_static("x, Upgrade "));
        assert!(connection_has_upgrade(&h));
        let mut h = http::HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!connection_has_upgrade(&h));
    }

    #[test]
    fn upgrade_tokens() {
        let v = HeaderValue::from_static(" websocket , foo/2,,");
        assert_eq!(
            tokens(&v).collect::<Vec<_>>(),
            vec![&b"websocket"[..], &b"foo/2"[..]]
        );
    }
}
