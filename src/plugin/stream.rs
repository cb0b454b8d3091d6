//! Stream-native transforms (the `stream-transform` world): a transform that also exports
//! `open-stream` and `on-event`. It is found at load by the world its component implements
//! (old transforms keep loading unchanged) and otherwise pooled and bound like any
//! transform. For a streamed response, one instance is taken out of the (route, worker)
//! pool and held by the response body ([`Held`]) until the stream ends, then given back —
//! unless a call failed, which discards it as every failed call does. Each call runs under
//! the plugin's CPU deadline on its own; the time between events costs nothing.

use super::bindings::stream_transform as st;
use super::bindings::transform::{Transform, TransformPre};
use super::host::HostState;
use super::{
    begin_call, bounded, classify, give_back, Bound, Hook, IdleStore, PluginFailure, Pool,
    RoleInstance, Warm,
};
use crate::config::OnError;
pub use st::portcullis::plugin::events::{Api, Event, EventAction, Framing, StreamInfo, Usage};
use std::sync::Arc;
use wasmtime::component::InstancePre;
use wasmtime::Store;

/// Where a `stream-transform`'s extra exports are, found once per component.
pub(super) struct Indices(st::StreamTransformIndices);

/// A `stream-transform` instance's extra exports.
pub(super) type Exports = st::StreamTransform;

impl Indices {
    /// `Some` when the component implements `stream-transform`.
    pub(super) fn new(pre: &InstancePre<HostState>) -> Option<Self> {
        st::StreamTransformIndices::new(pre).ok().map(Indices)
    }
}

/// Instantiates a `stream-transform`: its `transform` exports, and the stream exports
/// into `stream`.
pub(super) async fn instantiate(
    pre: &TransformPre<HostState>,
    indices: Option<&Indices>,
    store: &mut Store<HostState>,
    stream: &mut Option<Exports>,
) -> wasmtime::Result<RoleInstance> {
    let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
    let transform = Transform::new(&mut *store, &instance)?;
    if let Some(i) = indices {
        *stream = Some(i.0.load(&mut *store, &instance)?);
    }
    Ok(RoleInstance::Transform(transform))
}

/// One plugin's instance, held by a streamed response for its duration.
pub struct Held {
    /// `None` once a call failed (the instance is discarded).
    warm: Option<Warm>,
    /// A call is under way: dropped now (the client left mid-call), the instance may be
    /// half-way through guest code and must not be pooled again.
    calling: bool,
    bound: Arc<Bound>,
    idle: IdleStore,
    key: usize,
}

impl Pool {
    /// Whether the plugin implements `stream-transform`.
    pub fn streams(&self) -> bool {
        self.bound.plugin.stream.is_some()
    }

    /// Takes an instance for one stream and calls `open-stream`: `Some` when the plugin
    /// wants the stream's events (the instance is then held until the stream ends).
    pub async fn open_stream(
        &self,
        info: &StreamInfo,
        request_id: &http::HeaderValue,
    ) -> Result<Option<Held>, PluginFailure> {
        let started = std::time::Instant::now();
        let mut warm = match self.checkout().await {
            Ok(w) => w,
            Err(e) => return self.observed(Hook::OpenStream, started, Err(e)),
        };
        let ticks = warm.store.data().ticks;
        warm.store.set_epoch_deadline(ticks);
        begin_call(&mut warm.store);
        warm.store.data_mut().request_id = Some(request_id.clone());
        let exports = warm.stream.as_ref().expect("a stream plugin's instance");
        let r = bounded(
            self.bound.plugin.wall_bound(),
            exports.call_open_stream(&mut warm.store, info),
        )
        .await;
        match r {
            Ok(true) => {
                self.observed(Hook::OpenStream, started, Ok(()))?;
                Ok(Some(Held {
                    warm: Some(warm),
                    calling: false,
                    bound: self.bound.clone(),
                    idle: self.idle.clone(),
                    key: self.key,
                }))
            }
            Ok(false) => {
                let r = self.finish(warm, Ok(()));
                self.observed(Hook::OpenStream, started, r).map(|()| None)
            }
            Err(e) => {
                let r = self.finish(warm, Err::<(), _>(e));
                self.observed(Hook::OpenStream, started, r).map(|()| None)
            }
        }
    }
}

impl Held {
    pub fn name(&self) -> &Arc<str> {
        &self.bound.plugin.name
    }

    pub fn on_error(&self) -> OnError {
        self.bound.plugin.config.on_error
    }

    /// Calls `on-event`, under the plugin's CPU deadline. A failure discards the instance;
    /// later calls fail at once.
    pub async fn on_event(
        &mut self,
        event: &Event,
        usage: Option<Usage>,
    ) -> Result<EventAction, PluginFailure> {
        let started = std::time::Instant::now();
        let Some(warm) = self.warm.as_mut() else {
            return Err(PluginFailure::Trap(
                "the stream's instance failed earlier".into(),
            ));
        };
        let ticks = warm.store.data().ticks;
        warm.store.set_epoch_deadline(ticks);
        begin_call(&mut warm.store);
        let exports = warm.stream.as_ref().expect("a stream plugin's instance");
        self.calling = true;
        let called = bounded(
            self.bound.plugin.wall_bound(),
            exports.call_on_event(&mut warm.store, event, usage),
        )
        .await;
        self.calling = false;
        let r = match called {
            Ok(action) => Ok(action),
            Err(e) => {
                let failure = classify(&e, &warm.store);
                tracing::warn!(plugin = &*self.bound.plugin.name, route = &*self.bound.route, error = %failure, "on-event failed; instance discarded");
                self.warm = None;
                Err(failure)
            }
        };
        self.bound.metrics.observe(Hook::OnEvent, started, &r);
        r
    }
}

impl Drop for Held {
    /// The stream ended: a healthy instance goes back to its pool (if there is room).
    fn drop(&mut self) {
        if self.calling {
            return;
        }
        if let Some(warm) = self.warm.take() {
            give_back(&self.idle, self.key, warm);
        }
    }
}
