//! `[[routes.parts]]`: a composite route. Instead of one upstream the route names several
//! parts — each an upstream with an optional path and method, a name, `required`, a
//! timeout, and optionally the earlier part whose response body is its request body
//! (`input`, a pipeline). The route answers one JSON object with each part's answer under
//! its name (`proxy/composite.rs`). Parts are buffered to be merged, so a streaming part
//! (`stream = true`, or a route with `[routes.ai]`, whose model calls stream) is refused
//! here; a pipeline's order is checked here too (unknown names, cycles).

use super::error::ConfigError;
use super::section::Section;
use super::units::{Dur, Size};
use super::upstreams::UpstreamConfig;
use http::Method;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// One `[[routes.parts]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPart {
    /// `name = "detect"`: the part's key in the combined answer; unique in the route
    /// (letters, digits, `-`, `_`, `.`).
    name: Spanned<String>,
    /// `upstream = "detection"`: the `[[upstreams]]` name the part is sent to (with that
    /// upstream's balancing, breakers, retries).
    upstream: Spanned<String>,
    /// `path = "/v1/detect"`: the path sent (default: the path the route would forward);
    /// the client's query goes along.
    path: Option<Spanned<String>>,
    /// `method = "POST"` (default: the client's).
    method: Option<Spanned<String>>,
    /// `required = true`: the part's failure fails the whole request (default: false, the
    /// failure is reported inside the answer).
    required: Option<bool>,
    /// `timeout = "2s"`: the part's call and the reading of its body (default: the route's
    /// `request_timeout`, else the upstream's).
    timeout: Option<Spanned<Dur>>,
    /// `input = "detect"`: send that part's response body as this part's request body (a
    /// pipeline step: it starts when `detect` has answered).
    input: Option<Spanned<String>>,
    /// `stream = true`: a part whose answer streams (server-sent events). Refused: parts
    /// are buffered to be merged.
    stream: Option<Spanned<bool>>,
}

/// A validated composite route.
#[derive(Clone, Debug)]
pub struct CompositeConfig {
    pub parts: Vec<PartConfig>,
    /// The most bytes the parts' bodies may add up to (502 beyond).
    pub max_response_size: u64,
}

/// One part of a composite route.
#[derive(Clone, Debug)]
pub struct PartConfig {
    pub name: String,
    /// Index into [`super::Config::upstreams`].
    pub upstream: usize,
    /// The path sent instead of the route's (normal form, starting with `/`).
    pub path: Option<String>,
    pub method: Option<Method>,
    pub required: bool,
    pub timeout: Duration,
    /// The index of the part whose response body is this part's request body.
    pub input: Option<usize>,
}

/// The default `max_response_size`.
pub const DEFAULT_MAX_RESPONSE: u64 = 4 << 20;

/// The largest `max_response_size`: the combined answer must fit what the response chain
/// buffers for a merge plugin (16 MiB).
const MAX_RESPONSE: u64 = 16 << 20;

/// The most parts one route may have.
const MAX_PARTS: usize = 32;

/// What a composite route's request body is buffered up to (to be sent to every part),
/// unless `buffer_request_body` says otherwise.
pub const COMPOSITE_BODY: u64 = 1 << 20;

/// The route keys a composite route cannot have, with why.
pub(super) struct Incompatible<'a> {
    pub upstream: Option<&'a Spanned<String>>,
    pub fallback: bool,
    pub ai: Option<std::ops::Range<usize>>,
    pub preserve_host: bool,
    pub upgrades: Option<std::ops::Range<usize>>,
}

/// `[[routes.parts]]` of route `route` and its `max_response_size`; `None` for a route
/// without parts. `route_timeout` is the route's `request_timeout`.
pub(super) fn validate(
    cx: &Section<'_>,
    route: &str,
    raw: &[Spanned<RawPart>],
    max_response_size: &Option<Spanned<Size>>,
    route_timeout: Option<Duration>,
    not: Incompatible<'_>,
    upstreams: &[UpstreamConfig],
) -> Result<Option<CompositeConfig>, ConfigError> {
    if raw.is_empty() {
        return match max_response_size {
            Some(s) => Err(cx.error(s.span(), "max_response_size", "needs `parts`")),
            None => Ok(None),
        };
    }
    if let Some(u) = not.upstream {
        return Err(cx.error(
            u.span(),
            "upstream",
            format!("route `{route}` has `parts`: each part names its own upstream"),
        ));
    }
    if not.fallback {
        return Err(cx.error_at_table(
            "fallback",
            "a route with `parts` has no fallback chain (each part has its upstream's retries)",
        ));
    }
    if let Some(span) = not.ai {
        return Err(cx.error(
            span,
            "ai",
            "a route with `parts` buffers its parts' answers to merge them; model calls stream, \
             so `[routes.ai]` cannot be combined with `parts`",
        ));
    }
    if not.preserve_host {
        return Err(cx.error_at_table(
            "preserve_host",
            "a route with `parts` sends each part its upstream's own Host (the client does not \
             choose the parts' authorities)",
        ));
    }
    if let Some(span) = not.upgrades {
        return Err(cx.error(
            span,
            "upgrades",
            "a route with `parts` forwards no upgrades",
        ));
    }
    if raw.len() > MAX_PARTS {
        return Err(cx.error(
            raw[MAX_PARTS].span(),
            "parts",
            format!("at most {MAX_PARTS} parts per route"),
        ));
    }
    let mut parts: Vec<PartConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let pcx = cx.table(&format!("parts[{i}]"), p.span());
        parts.push(part(&pcx, p.get_ref(), &parts, route_timeout, upstreams)?);
    }
    // `input` names any part of the route; resolved once all names are known.
    for (i, p) in raw.iter().enumerate() {
        let pcx = cx.table(&format!("parts[{i}]"), p.span());
        let Some(input) = &p.get_ref().input else {
            continue;
        };
        let Some(j) = parts.iter().position(|q| q.name == *input.get_ref()) else {
            let known: Vec<&str> = parts.iter().map(|q| q.name.as_str()).collect();
            return Err(pcx.error(
                input.span(),
                "input",
                format!(
                    "unknown part `{}` (parts of route `{route}`: {})",
                    input.get_ref(),
                    known.join(", ")
                ),
            ));
        };
        parts[i].input = Some(j);
    }
    check_cycles(cx, raw, &parts)?;
    let max = max_response_size
        .as_ref()
        .map(|s| Spanned::new(s.span(), s.get_ref().0));
    let max_response_size = cx
        .range(&max, "max_response_size", 1..=MAX_RESPONSE)?
        .unwrap_or(DEFAULT_MAX_RESPONSE);
    Ok(Some(CompositeConfig {
        parts,
        max_response_size,
    }))
}

/// One part, its `input` not yet resolved.
fn part(
    cx: &Section<'_>,
    p: &RawPart,
    earlier: &[PartConfig],
    route_timeout: Option<Duration>,
    upstreams: &[UpstreamConfig],
) -> Result<PartConfig, ConfigError> {
    let name = cx.name(&p.name, "part", earlier.iter().map(|q| q.name.as_str()))?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(cx.error(
            p.name.span(),
            "name",
            format!("`{name}`: a part name holds only letters, digits, `-`, `_` and `.`"),
        ));
    }
    if let Some(s) = p.stream.as_ref().filter(|s| *s.get_ref()) {
        return Err(cx.error(
            s.span(),
            "stream",
            format!(
                "part `{name}` streams, but a composite route buffers its parts' answers to \
                 merge them: give the streaming service a route of its own"
            ),
        ));
    }
    let Some(upstream) = upstreams
        .iter()
        .position(|u| u.name == *p.upstream.get_ref())
    else {
        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        return Err(cx.error(
            p.upstream.span(),
            "upstream",
            format!(
                "part `{name}` names unknown upstream `{}` (known: {})",
                p.upstream.get_ref(),
                known.join(", ")
            ),
        ));
    };
    let path = p
        .path
        .as_ref()
        .map(|v| super::routes::check_path(cx, v, "path"))
        .transpose()?;
    if let (Some(path), Some(raw)) = (&path, &p.path) {
        if path.parse::<http::uri::PathAndQuery>().is_err() || path.contains('?') {
            return Err(cx.error(raw.span(), "path", format!("`{path}` is not a URI path")));
        }
    }
    let method = match &p.method {
        None => None,
        Some(m) => Some(
            Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                cx.error(
                    m.span(),
                    "method",
                    format!("`{}` is not an HTTP method", m.get_ref()),
                )
            })?,
        ),
    };
    let timeout = cx
        .positive(&p.timeout, "timeout")?
        .or(route_timeout)
        .unwrap_or(upstreams[upstream].request_timeout);
    Ok(PartConfig {
        name,
        upstream,
        path,
        method,
        required: p.required.unwrap_or(false),
        timeout,
        input: None,
    })
}

/// A pipeline must end: following `input` from any part never comes back to it. The
/// error points at the `input` of the first part (in file order) on a cycle.
fn check_cycles(
    cx: &Section<'_>,
    raw: &[Spanned<RawPart>],
    parts: &[PartConfig],
) -> Result<(), ConfigError> {
    for (start, p) in parts.iter().enumerate() {
        let mut at = p.input;
        let mut steps = 0;
        while let Some(i) = at {
            if i == start {
                let mut names = vec![p.name.as_str()];
                let mut k = p.input;
                while let Some(j) = k.filter(|&j| j != start) {
                    names.push(&parts[j].name);
                    k = parts[j].input;
                }
                names.push(&p.name);
                let input = raw[start]
                    .get_ref()
                    .input
                    .as_ref()
                    .expect("a part on a cycle has an input");
                return Err(cx
                    .table(&format!("parts[{start}]"), raw[start].span())
                    .error(
                        input.span(),
                        "input",
                        format!(
                            "the parts' inputs form a cycle ({}): a pipeline needs a first step",
                            names.join(" ← ")
                        ),
                    ));
            }
            steps += 1;
            if steps > parts.len() {
                // On a cycle that does not pass through `start`: reported from its own parts.
                break;
            }
            at = parts[i].input;
        }
    }
    Ok(())
}
