//! Model calls on the request path (routes with `[routes.ai]`, see `ai/`): before a
//! request is forwarded, the API and operation its path names and its `model` are read,
//! and `stream_options.include_usage` is added where the route asks. The body is read
//! only when plugins already buffered it or it declares a length within the route's
//! `ai.max_request_body`; a larger or undeclared (chunked) body streams through unread
//! — except on a route with a token limit, which reads every body up to that size (413
//! beyond) to estimate the tokens it reserves, and, where the route names a
//! `tokenizer` and a limit counts input tokens, to count the prompt's tokens (`ai::prompt`;
//! a body over 16 KiB on the blocking pool).

use super::context::ClientRequest;
use super::error::ProxyError;
use super::RouteEntry;
use crate::ai::{prompt, request, Exchange};
use http::header;
use hyper::body::Body as _;

/// The model call `req` is, if its route serves model APIs and its path names one.
pub(super) async fn read_call(
    route: &RouteEntry,
    req: &mut ClientRequest,
) -> Result<Option<Box<Exchange>>, ProxyError> {
    let Some(ai) = &route.config.ai else {
        return Ok(None);
    };
    let Some((api, operation)) = request::classify(ai.api, req.target.path()) else {
        return Ok(None);
    };
    let cap = ai.max_request_body.min(route.config.max_body_size);
    let declared = req.body.stream.as_ref().and_then(|b| b.size_hint().exact());
    // A route with a token limit reads every body (a chunked one too, 413 past the cap):
    // the reservation is estimated from it.
    let must_read = route.limits.counts_tokens() && declared != Some(0);
    if req.body.buffered.is_none() && (must_read || declared.is_some_and(|n| n > 0 && n <= cap)) {
        req.body.buffer(cap).await?;
    }
    // The prompt is counted only where a limit reserves input tokens; a body large
    // enough to keep a worker busy is read on the blocking pool (the `Bytes` shared, not
    // copied), so the worker's other connections do not wait behind it.
    let tokenizer = ai.tokenizer.filter(|_| route.limits.counts_input_tokens());
    let include_usage = ai.include_usage;
    let read = match req.body.buffered.clone() {
        None => request::Read::default(),
        Some(b) if tokenizer.is_some() && b.len() > prompt::INLINE_BODY => {
            tokio::task::spawn_blocking(move || {
                request::read(&b, api, operation, include_usage, tokenizer)
            })
            .await
            .unwrap_or_default()
        }
        Some(b) => request::read(&b, api, operation, include_usage, tokenizer),
    };
    let injected = read.rewritten.is_some();
    if let Some(body) = read.rewritten {
        // Sent with its own Content-Length (`forward` sets it from the buffered bytes).
        req.body.buffered = Some(body);
    }
    // The response must come back readable: no content coding (identity is always
    // acceptable to the client).
    req.head.headers.remove(header::ACCEPT_ENCODING);
    Ok(Some(Box::new(Exchange {
        api,
        operation,
        request_model: read.model,
        injected,
        error_event: ai.stream_error_event,
        metrics: route.metrics.models.clone(),
        max_tokens: read.max_tokens,
        prompt_tokens: read.prompt_tokens,
        // A body declared empty is known to be empty (it was not read).
        body_len: req
            .body
            .buffered
            .as_ref()
            .map(|b| b.len() as u64)
            .or((declared == Some(0)).then_some(0)),
    })))
}
