//! Phase 1, route: the router's native match (path, host, method, headers, query) gives
//! candidates in precedence order; each candidate's predicate plugins then decide, and
//! the first route they all accept takes the request.

use super::chain::plugin_request;
use super::context::{ClientRequest, RequestCtx};
use super::error::ProxyError;
use super::{Gateway, RouteEntry};
use crate::config::OnError;
use crate::plugin::host::RequestRes;
use crate::plugin::Role;
use crate::router::Match;
use hyper::body::Body as _;

impl Gateway {
    /// Chooses the route, or answers 404/405 (or fails if a predicate plugin failed and
    /// its policy is to deny). A route whose predicates need the body gets it buffered.
    pub(super) async fn route<'g>(
        &'g self,
        req: &mut ClientRequest,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<&'g RouteEntry, ProxyError> {
        let first = self
            .router
            .candidates(&req.head, req.target.path(), req.target.host())
            .next();
        match first {
            // Boxed, as the other plugin phases are (`Gateway::process`).
            Some(r)
                if self
                    .pools(r)
                    .iter()
                    .any(|p| p.bound.plugin.role == Role::Predicate) =>
            {
                Box::pin(self.route_with_predicates(req, ctx)).await
            }
            // A first candidate without predicates takes the request, as in the loop below.
            first => self.chosen(first, req, ctx),
        }
    }

    /// [`Self::route`] when the first candidate route has predicate plugins.
    async fn route_with_predicates<'g>(
        &'g self,
        req: &mut ClientRequest,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<&'g RouteEntry, ProxyError> {
        ctx.settle_own(&mut req.head.headers);
        // The predicates' read-only view of the request, built once if any route has them.
        let mut view: Option<RequestRes> = None;
        let mut chosen = None;
        'routes: for route in
            self.router
                .candidates(&req.head, req.target.path(), req.target.host())
        {
            for pool in self
                .pools(route)
                .iter()
                .filter(|p| p.bound.plugin.role == Role::Predicate)
            {
                if let Some(limit) = route.config.buffer_request_body {
                    req.body.buffer(limit).await?;
                }
                let mut res = view
                    .take()
                    .unwrap_or_else(|| plugin_request(req, ctx.client, None, true));
                res.body.clone_from(&req.body.buffered);
                let (back, verdict) = pool.matches(res).await;
                view = Some(back);
                let name = &pool.bound.plugin.name;
                match verdict {
                    Ok(true) => {}
                    Ok(false) => continue 'routes,
                    Err(e) if pool.on_error() == OnError::Allow => {
                        tracing::warn!(plugin = &**name, error = %e, "predicate failed; on_error = allow treats it as matching");
                        ctx.note_plugin(name, "error_allowed");
                    }
                    Err(_) => {
                        ctx.note_plugin(name, "error");
                        return Err(ProxyError::PluginFailed(name.to_string()));
                    }
                }
            }
            chosen = Some(route);
            break;
        }
        self.chosen(chosen, req, ctx)
    }

    /// The route that takes the request, or 404/405 when none does; a body is refused up
    /// front when its declared length is over what the route will take (or buffer).
    fn chosen<'g>(
        &'g self,
        chosen: Option<&'g RouteEntry>,
        req: &ClientRequest,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<&'g RouteEntry, ProxyError> {
        let Some(route) = chosen else {
            return Err(
                match self
                    .router
                    .no_match(&req.head, req.target.path(), req.target.host())
                {
                    Match::MethodNotAllowed(ms) => ProxyError::MethodNotAllowed(
                        ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
                    ),
                    _ => ProxyError::NotFound,
                },
            );
        };
        ctx.route = Some(route);
        let limit = route.body_limit();
        if req
            .body
            .stream
            .as_ref()
            .is_some_and(|b| b.size_hint().lower() > limit)
        {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        Ok(route)
    }
}
