//! Phase 2, chain: the route's auth and transform plugins on the request, in route order
//! (an auth plugin may deny and names the consumer; a transform may rewrite the request
//! or answer it), and on the way back the `on-response` hooks of the transforms the
//! request got past, in reverse order.

use super::body::ResponseBody;
use super::context::{ClientRequest, RequestCtx, X_CONSUMER};
use super::error::ProxyError;
use super::headers::ClientInfo;
use super::{Gateway, RouteEntry};
use crate::config::OnError;
use crate::plugin::bindings::{AuthDecision, Hooks, Reply, RequestAction};
use crate::plugin::host::{self as plugin_host, RequestRes, ResponseRes};
use crate::plugin::{PluginFailure, Pool, Role};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::BodyExt as _;

/// Responses buffered for `response-body` transforms may not exceed this.
const MAX_BUFFERED_RESPONSE: usize = 16 << 20;

/// What the response chain needs from the request chain: the transforms with an
/// `on-response` hook that the request got past, and a read-only copy of the request as
/// it was forwarded.
#[derive(Default)]
pub(super) struct Passed<'g> {
    hooked: Vec<&'g Pool>,
    request: Option<RequestRes>,
    /// The `stream-transform`s the request got past (`proxy::events`).
    pub streaming: Vec<&'g Pool>,
}

impl Passed<'_> {
    pub fn has_response_hooks(&self) -> bool {
        self.request.is_some() || !self.streaming.is_empty()
    }
}

/// How the request chain ended when it did not fail.
pub(super) enum Chain<'g> {
    /// Go upstream.
    Proceed(Passed<'g>),
    /// A plugin answered the request itself (auth deny, transform respond). Boxed: a
    /// response is large, and a plugin's reply is the rare path.
    Reply(Passed<'g>, Box<Response<ResponseBody>>),
}

impl Gateway {
    /// Runs the route's auth and transform plugins on the request, in order.
    pub(super) async fn request_chain<'g>(
        &'g self,
        route: &'g RouteEntry,
        req: &mut ClientRequest,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<Chain<'g>, ProxyError> {
        let pools = self.pools(route);
        let mut passed = Passed::default();
        if pools.iter().all(|p| p.bound.plugin.role == Role::Predicate) {
            return Ok(Chain::Proceed(passed));
        }
        if let Some(limit) = route.config.buffer_request_body {
            req.body.buffer(limit).await?;
        }
        ctx.settle_own(&mut req.head.headers);
        let buffered = req.body.buffered.take();
        let mut res = plugin_request(req, ctx.client, buffered, false);
        res.headers = std::mem::take(&mut req.head.headers);
        let reply = run_request_hooks(
            pools,
            &mut res,
            &mut passed.hooked,
            &mut passed.streaming,
            ctx,
        )
        .await;
        req.head.headers = std::mem::take(&mut res.headers);
        ctx.headers_replaced(&req.head.headers);
        req.body.buffered = res.body.take();
        // Response hooks get a read-only copy of the request as it was forwarded.
        if !passed.hooked.is_empty() {
            let mut copy = plugin_request(req, ctx.client, None, true);
            copy.path.clone_from(&res.path);
            copy.query.clone_from(&res.query);
            passed.request = Some(copy);
        }
        if res.path != req.target.path() || res.query.as_deref() != req.target.uri.query() {
            req.rewritten = Some((std::mem::take(&mut res.path), res.query.take()));
        }
        Ok(match reply? {
            Some(reply) => Chain::Reply(passed, Box::new(reply)),
            None => Chain::Proceed(passed),
        })
    }

    /// Runs `on-response` of the transforms the request got past, in reverse order.
    pub(super) async fn response_chain(
        &self,
        passed: Passed<'_>,
        resp: Response<ResponseBody>,
        ctx: &mut RequestCtx<'_>,
    ) -> Response<ResponseBody> {
        let Some(mut req) = passed.request else {
            return resp;
        };
        let wants_body = passed
            .hooked
            .iter()
            .any(|p| p.bound.hooks.contains(Hooks::RESPONSE_BODY));
        let (parts, body) = resp.into_parts();
        let (body_bytes, mut keep_body) = if wants_body {
            match http_body_util::Limited::new(body, MAX_BUFFERED_RESPONSE)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(_) => {
                    return ctx.fail(ProxyError::Upstream(
                        "response body too large to buffer for plugins".into(),
                    ))
                }
            }
        } else {
            (None, Some(body))
        };
        let mut res = ResponseRes {
            status: parts.status,
            headers: parts.headers,
            body: body_bytes,
        };
        for pool in passed.hooked.iter().rev() {
            let (rq, rs, r) = pool.on_response(req, res).await;
            req = rq;
            res = rs;
            if let Err(e) = r {
                let name = &pool.bound.plugin.name;
                if pool.on_error() == OnError::Deny {
                    ctx.note_plugin(name, "error");
                    return ctx.fail(ProxyError::PluginFailed(name.to_string()));
                }
                ctx.note_plugin(name, "error_allowed");
                tracing::warn!(plugin = &**name, error = %e, "on-response failed; on_error = allow keeps the response");
            }
        }
        let mut out = match (res.body.take(), keep_body.take()) {
            (Some(bytes), _) => {
                res.headers.remove(header::CONTENT_LENGTH);
                res.headers.remove(header::TRANSFER_ENCODING);
                Response::new(ResponseBody::full(bytes))
            }
            (None, Some(b)) => Response::new(b),
            (None, None) => Response::new(ResponseBody::full(Bytes::new())),
        };
        *out.status_mut() = res.status;
        *out.headers_mut() = res.headers;
        out
    }
}

/// The request hooks in route order; `Some` when a plugin answered the request itself.
/// Transforms that passed it and hook the response are collected in `hooked`, stream
/// transforms in `streaming`.
async fn run_request_hooks<'g>(
    pools: &'g [Pool],
    res: &mut RequestRes,
    hooked: &mut Vec<&'g Pool>,
    streaming: &mut Vec<&'g Pool>,
    ctx: &mut RequestCtx<'_>,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    for pool in pools {
        let name = &pool.bound.plugin.name;
        match pool.bound.plugin.role {
            Role::Predicate => continue,
            Role::Auth => {
                let (back, decision) = pool.authenticate(take_request(res)).await;
                *res = back;
                match decision {
                    Ok(AuthDecision::Allow(Some(consumer))) => {
                        if let Ok(v) = HeaderValue::from_str(&consumer) {
                            res.headers.insert(X_CONSUMER, v);
                        }
                        ctx.consumer = Some(consumer);
                    }
                    Ok(AuthDecision::Allow(None)) => {}
                    Ok(AuthDecision::Deny(reply)) => {
                        ctx.note_plugin(name, "deny");
                        return Ok(Some(reply_response(reply)));
                    }
                    Err(e) => plugin_failed(pool, &e, ctx)?,
                }
            }
            Role::Transform => {
                if pool.bound.hooks.contains(Hooks::ON_REQUEST) {
                    let (back, action) = pool.on_request(take_request(res)).await;
                    *res = back;
                    match action {
                        Ok(RequestAction::Proceed) => {}
                        Ok(RequestAction::Respond(reply)) => {
                            ctx.note_plugin(name, "respond");
                            return Ok(Some(reply_response(reply)));
                        }
                        Err(e) => {
                            plugin_failed(pool, &e, ctx)?;
                            continue;
                        }
                    }
                }
                if pool.bound.hooks.contains(Hooks::ON_RESPONSE) {
                    hooked.push(pool);
                }
                if pool.streams() {
                    streaming.push(pool);
                }
            }
        }
        tracing::trace!(plugin = &**name, "plugin passed");
    }
    Ok(None)
}

/// The request as a plugin sees it (headers are moved in by the caller when they may
/// change).
pub(super) fn plugin_request(
    req: &ClientRequest,
    client: &ClientInfo,
    body: Option<bytes::Bytes>,
    read_only: bool,
) -> RequestRes {
    let head = &req.head;
    RequestRes {
        method: head.method.clone(),
        scheme: client.scheme(),
        authority: req
            .target
            .authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .map(str::to_string),
        path: req.target.path().to_string(),
        query: req.target.uri.query().map(str::to_string),
        headers: if read_only {
            head.headers.clone()
        } else {
            http::HeaderMap::new()
        },
        client: client.addr.ip(),
        body,
        read_only,
    }
}

/// Moves the request out to lend it to a plugin call (the call gives it back).
fn take_request(res: &mut RequestRes) -> RequestRes {
    std::mem::replace(
        res,
        RequestRes {
            method: http::Method::GET,
            scheme: "http",
            authority: None,
            path: String::new(),
            query: None,
            headers: http::HeaderMap::new(),
            client: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            body: None,
            read_only: true,
        },
    )
}

/// A failed plugin: its `on_error` policy lets the request through or fails it.
fn plugin_failed(
    pool: &Pool,
    e: &PluginFailure,
    ctx: &mut RequestCtx<'_>,
) -> Result<(), ProxyError> {
    let name = &pool.bound.plugin.name;
    match pool.on_error() {
        OnError::Allow => {
            tracing::warn!(plugin = &**name, route = &*pool.bound.route, error = %e, "plugin failed; on_error = allow lets the request through");
            ctx.note_plugin(name, "error_allowed");
            Ok(())
        }
        OnError::Deny => {
            ctx.note_plugin(name, "error");
            Err(ProxyError::PluginFailed(name.to_string()))
        }
    }
}

/// A plugin's own reply (auth deny, transform respond) as a response.
fn reply_response(reply: Reply) -> Response<ResponseBody> {
    let status = http::StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(ResponseBody::full(Bytes::from(reply.body)));
    *resp.status_mut() = status;
    // The same rules as the plugin's own header setters: gateway-managed headers are dropped.
    for (n, v) in reply.headers {
        if let (Ok(n), Ok(v)) = (plugin_host::header_name(&n), plugin_host::header_value(&v)) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}
