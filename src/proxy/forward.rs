//! Phase 3, forward: the upstream request is built from the client's (normalized or
//! rewritten path, `X-Forwarded-*`, the route's Host policy applied to the request's one
//! authority, the body streamed or as buffered), handed to the upstream's try loop
//! ([`crate::upstream::Upstream::call`]), and its response head comes back with the
//! upstream's body streamed through — or, for an upgrade the upstream accepted, the
//! switch is answered and the tunnel started (`upgrade.rs`).

use super::body::ResponseBody;
use super::context::{ClientRequest, RequestCtx};
use super::error::ProxyError;
use super::upgrade::Handshake;
use super::{headers, Gateway, RouteEntry, WorkerUpstream};
use crate::config::{BalanceKind, HashKey, HostPolicy, Protocol};
use crate::hash::hash_bytes;
use crate::router;
use crate::upstream::call::{AddedFields, Call};
use crate::upstream::client::{path_and_query, version_for};
use crate::upstream::replay::Replay;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::Response;
use std::future::Future;
use std::net::SocketAddr;

impl Gateway {
    // `forward` and `forward_to` return an `async move` block instead of being `async
    // fn`s: an `async fn` keeps its arguments at the front of its future and moves each
    // into a local of its own when it starts, so the request was held twice in each, and
    // it is borrowed (so kept) until the end. Their futures are held inline by
    // `Gateway::process`'s, which the worker boxes for every request. (The request is
    // boxed itself now: see `ClientRequest::read`.)
    #[allow(clippy::manual_async_fn)] // see above
    pub(super) fn forward<'a, 'g>(
        &'a self,
        route: &'a RouteEntry,
        mut req: Box<ClientRequest>,
        ctx: &'a mut RequestCtx<'g>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + use<'a, 'g> {
        async move {
            // What only some routes do is boxed (see `Gateway::process`).
            if route.config.ai.is_some() {
                ctx.ai = super::boxed(|| super::model::read_call(route, &mut req)).await?;
            }
            if !route.limits.is_empty() {
                super::boxed(|| admit(route, &req, ctx)).await?;
            }
            if route.config.composite.is_some() {
                super::boxed(|| self.forward_composite(route, req, ctx)).await
            } else if route.config.fallback.is_empty() {
                self.forward_to(route, self.upstream(route), req, ctx).await
            } else {
                super::boxed(|| self.forward_with_fallback(route, req, ctx)).await
            }
        }
    }

    /// Sends the request to one upstream (the route's, or a fallback).
    #[allow(clippy::manual_async_fn)] // an `async move` block: see `forward`
    pub(super) fn forward_to<'a, 'g>(
        &'a self,
        route: &'a RouteEntry,
        to: &'a WorkerUpstream,
        mut req: Box<ClientRequest>,
        ctx: &'a mut RequestCtx<'g>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + use<'a, 'g> {
        async move {
            let WorkerUpstream { upstream, client } = to;
            let handshake = Handshake::prepare(ctx.upgrade.take(), route, &mut req)?;
            let path_and_query = upstream_path(route, &req)?;
            // Only the gateway's own fields are added to the response on its way.
            let raw_head = ctx.raw_heads && route.plain && handshake.is_none();
            // The upstream request is made by the try loop as it starts, in the loop's
            // own state: made here and handed over, it was copied three times (~580
            // bytes each: out of a `Result`, into the loop's arguments, into its box).
            let (shake, cx) = (handshake.as_ref(), &mut *ctx);
            let make = move || {
                let to = Destination {
                    path_and_query,
                    handshake: shake,
                    raw_head,
                };
                self.call_for(route, upstream, req, cx, to)
            };
            // Boxed: the try loop's state is the largest part of the request's future,
            // and each enclosing future copies its child's state into place when it
            // starts it. The box is made first and the future made in it (`boxed`).
            let called = super::boxed(|| upstream.call_with(client, make)).await;
            ctx.endpoint = called.endpoint;
            let answer = called
                .result
                .map_err(|e| ProxyError::from_call(e, route.config.max_body_size))?;
            ctx.upstream_ms = Some(answer.rtt.as_secs_f64() * 1e3);
            let status = answer.response.status();
            match handshake {
                Some(h) if h.switched(status)? => {
                    let drain = self.server.drain_timeout;
                    return h.open(route, answer.response, answer.guard, ctx, drain);
                }
                None if status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(ProxyError::BadUpgrade(
                        "upstream switched protocols without being asked to",
                    ));
                }
                _ => {}
            }
            let (mut parts, body) = answer.response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            let body = ResponseBody::upstream(
                body,
                upstream.config.idle_timeout,
                answer.guard,
                route.name.clone(),
            );
            Ok(Response::from_parts(parts, body))
        }
    }

    /// The upstream request, everything but the endpoint.
    pub(super) fn upstream_request(
        &self,
        route: &RouteEntry,
        upstream: &Upstream,
        req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<Call, ProxyError> {
        let to = Destination {
            path_and_query: upstream_path(route, &req)?,
            handshake: None,
            raw_head: false,
        };
        Ok(self.call_for(route, upstream, req, ctx, to))
    }

    /// [`Self::upstream_request`] once its target is known. (The call is made last, so
    /// that it is made where the caller's result goes: see `forward_to`.)
    fn call_for(
        &self,
        route: &RouteEntry,
        upstream: &Upstream,
        req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'_>,
        to: Destination<'_>,
    ) -> Call {
        let key = hash_key(upstream, &req.head.headers, ctx.client.addr);
        let ClientRequest {
            mut head,
            target,
            body,
            ..
        } = *req;
        let host = target.authority;
        head.version = version_for(upstream.config.protocol);
        // The client's hop-by-hop headers were stripped before anything else
        // (`headers::clean_request`); plugins cannot set them.
        let h = &mut head.headers;
        let mut added = AddedFields::default();
        ctx.own_fields(&mut added);
        headers::set_forwarded(
            h,
            &mut added,
            ctx.present(),
            ctx.client,
            host.as_ref(),
            self.server.trust_forwarded_headers,
        );
        let is_h2 = upstream.config.protocol == Protocol::H2;
        // `None`: the Host header is the endpoint's own, set per try.
        let fixed_host = match &route.config.host {
            HostPolicy::Target => None,
            HostPolicy::Preserve => host,
            HostPolicy::Rewrite(v) => Some(v.clone()),
        };
        match &fixed_host {
            Some(v) => {
                h.insert(header::HOST, v.clone());
            }
            None if is_h2 => {
                h.remove(header::HOST);
            }
            None => {}
        }
        let body = match (body.buffered, body.stream) {
            (Some(bytes), _) => {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                h.remove(header::TRANSFER_ENCODING);
                Replay::Bytes(bytes)
            }
            (None, None) => Replay::Bytes(Bytes::new()),
            (None, Some(b)) => Replay::Stream(Some(b)),
        };
        if let Some(h) = to.handshake {
            h.request_headers(&mut head);
        }
        Call {
            head,
            path_and_query: to.path_and_query,
            endpoint_host: fixed_host.is_none() && !is_h2,
            added,
            body,
            body_limit: route.config.max_body_size,
            key,
            timeout: route
                .config
                .request_timeout
                .unwrap_or(upstream.config.request_timeout),
            raw_head: to.raw_head,
        }
    }
}

/// Where an upstream request goes beyond its upstream: its path and query, the upgrade
/// it asks for, and whether its response head may be kept raw ([`Call::raw_head`]).
struct Destination<'h> {
    path_and_query: PathAndQuery,
    handshake: Option<&'h Handshake>,
    raw_head: bool,
}

/// Reserves the request's estimated cost under its route's limits (`limits/`), or
/// refuses it; the reservations wait in `ctx.limits` to ride in the response body.
async fn admit(
    route: &RouteEntry,
    req: &ClientRequest,
    ctx: &mut RequestCtx<'_>,
) -> Result<(), ProxyError> {
    use crate::limits::{self, Denied, Facts};
    let (input, output, model, api) = match &ctx.ai {
        Some(x) => {
            let ai = route.config.ai.as_ref();
            let body = x
                .body_len
                .unwrap_or_else(|| ai.map_or(0, |a| a.max_request_body));
            (
                x.prompt_tokens.unwrap_or(body.div_ceil(4)),
                x.max_tokens
                    .unwrap_or_else(|| ai.map_or(0, |a| a.default_max_tokens)),
                x.request_model.as_deref(),
                Some(x.api),
            )
        }
        None => (0, 0, None, None),
    };
    let facts = Facts {
        consumer: ctx.consumer.as_deref(),
        route: &route.name,
        model,
        client: ctx.client.addr.ip(),
        headers: &req.head.headers,
        input,
        output,
        request_id: ctx.request_id.to_str().unwrap_or(""),
    };
    match limits::admit(&route.limits, &facts).await {
        Ok(a) => {
            ctx.limits = Some(Box::new(a));
            Ok(())
        }
        Err(Denied::Limited(r)) => Err(ProxyError::LimitExceeded(Box::new((r, api)))),
        Err(Denied::BackendDown(limit)) => Err(ProxyError::LimitBackendDown(limit)),
    }
}

/// The path and query sent upstream: the route's prefix stripped; an unchanged path is
/// forwarded with the client's own bytes, no copy.
fn upstream_path(route: &RouteEntry, req: &ClientRequest) -> Result<PathAndQuery, ProxyError> {
    let bad = || ProxyError::BadRequest("request target cannot be forwarded");
    match &req.rewritten {
        Some((p, q)) => {
            path_and_query(router::upstream_path(&route.config, p), q.as_deref()).ok_or_else(bad)
        }
        None => {
            let t = &req.target;
            let up_path = router::upstream_path(&route.config, t.path());
            let same_path = t.path_unchanged() && up_path.len() == t.path().len();
            match t.uri.path_and_query() {
                Some(pq) if same_path => Ok(pq.clone()),
                _ => path_and_query(up_path, t.uri.query()).ok_or_else(bad),
            }
        }
    }
}

/// The request's consistent-hash key (0 when the upstream balances otherwise).
fn hash_key(upstream: &Upstream, h: &http::HeaderMap, client: SocketAddr) -> u64 {
    if upstream.balance() != BalanceKind::ConsistentHash {
        return 0;
    }
    match upstream.hash_key() {
        HashKey::Header(name) => h
            .get(name)
            .map_or_else(|| hash_ip(client), |v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => {
            cookie(h, name).map_or_else(|| hash_ip(client), |c| hash_bytes(c.as_bytes()))
        }
        HashKey::ClientAddr => hash_ip(client),
    }
}

fn hash_ip(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|kv| {
                let (k, val) = kv.trim().split_once('=')?;
                (k == name).then_some(val)
            })
        })
}
