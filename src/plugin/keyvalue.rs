//! The key-value store of plugins: `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`) and
//! the gateway's `keyvalue-ext` (TTL, increment with TTL, compare-and-swap), granted per
//! plugin as one namespace (`keyvalue = { namespace, backend }`). `store.open` of any
//! other name, or of anything without a grant, is `access-denied` and a warning naming
//! the plugin.
//!
//! Backends: [`LOCAL`], one process-wide map shared by every worker (and kept across
//! reloads), where an expired entry reads as absent and is swept every few thousand
//! writes; and Redis, with the `[redis]` connection settings of the gateway's limits
//! (URL, timeout, key prefix), keys `PREFIX:kv:NAMESPACE:KEY`, the compound operations
//! as one Lua script each so that gateways sharing the Redis see them atomically. Each
//! worker talks to Redis over a connection of its own ([`RedisConn`]).
//! Integers are stored as decimal text in both, as Redis's `INCRBY` does.

use super::bindings::capabilities::portcullis::plugin::keyvalue_ext;
use super::bindings::capabilities::wasi::keyvalue::{atomics, store};
use super::host::HostState;
use crate::config::{KeyValueBackend, KeyValueGrant, RedisConfig};
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::Resource;

/// An open bucket: the guest's handle on its namespace.
pub struct Bucket {
    namespace: Arc<str>,
}

/// What one plugin was granted, as its instances see it.
#[derive(Clone)]
pub struct Grant {
    namespace: Arc<str>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local,
    Redis(Arc<RedisConn>),
}

impl Grant {
    /// The grant of `cfg`, using `redis` (made once per loaded config) for Redis, through
    /// a connection of its own for the calls made while loading (`configure`); the
    /// workers' instances get [`Grant::on_worker`]'s.
    pub fn new(cfg: &KeyValueGrant, redis: Option<&Arc<RedisKv>>) -> Option<Grant> {
        let backend = match cfg.backend {
            KeyValueBackend::Local => Backend::Local,
            KeyValueBackend::Redis => Backend::Redis(Arc::new(RedisConn::new(redis?.clone()))),
        };
        Some(Grant {
            namespace: Arc::from(cfg.namespace.as_str()),
            backend,
        })
    }

    /// The same grant through `worker`'s connection to its Redis.
    pub fn on_worker(&self, worker: &mut WorkerRedis) -> Grant {
        match &self.backend {
            Backend::Local => self.clone(),
            Backend::Redis(c) => Grant {
                namespace: self.namespace.clone(),
                backend: Backend::Redis(worker.conn(&c.redis)),
            },
        }
    }
}

type KvResult<T> = Result<T, store::Error>;

fn other(e: impl std::fmt::Display) -> store::Error {
    store::Error::Other(e.to_string())
}

/// A stored value and when it stops being one.
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// The in-process store: `NAMESPACE \0 KEY` to its entry.
pub static LOCAL: LazyLock<Local> = LazyLock::new(|| Local {
    map: DashMap::new(),
    writes: AtomicU64::new(0),
});

pub struct Local {
    map: DashMap<String, Entry>,
    writes: AtomicU64,
}

/// Writes between two sweeps of expired entries.
const SWEEP_EVERY: u64 = 4096;

fn local_key(ns: &str, key: &str) -> String {
    let mut k = String::with_capacity(ns.len() + 1 + key.len());
    k.push_str(ns);
    k.push('\0');
    k.push_str(key);
    k
}

fn expiry(ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

fn parse_int(v: &[u8]) -> KvResult<i64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| other("the value is not a decimal integer"))
}

impl Local {
    fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.map.retain(|_, e| e.live(now));
        }
    }

    fn get(&self, k: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let e = self.map.get(k)?;
        e.live(now).then(|| e.value.clone())
    }

    fn set(&self, k: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        self.map.insert(
            k,
            Entry {
                value,
                expires: expiry(ttl_ms),
            },
        );
        self.wrote();
    }

    fn delete(&self, k: &str) {
        self.map.remove(k);
    }

    fn keys(&self, ns: &str) -> Vec<String> {
        let now = Instant::now();
        self.map
            .iter()
            .filter(|e| e.value().live(now))
            .filter_map(|e| {
                let (n, k) = e.key().split_once('\0')?;
                (n == ns).then(|| k.to_string())
            })
            .collect()
    }

    fn increment(&self, k: String, delta: i64, ttl_ms: Option<u64>) -> KvResult<i64> {
        let now = Instant::now();
        let mut e = self.map.entry(k).or_insert_with(|| Entry {
            value: b"0".to_vec(),
            expires: expiry(ttl_ms),
        });
        if !e.live(now) {
            *e = Entry {
                value: b"0".to_vec(),
                expires: expiry(ttl_ms),
            };
        }
        let v = parse_int(&e.value)?
            .checked_add(delta)
            .ok_or_else(|| other("the increment overflows"))?;
        e.value = v.to_string().into_bytes();
        drop(e);
        self.wrote();
        Ok(v)
    }

    fn compare_and_swap(
        &self,
        k: String,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> bool {
        let now = Instant::now();
        let swapped = match self.map.entry(k) {
            dashmap::Entry::Occupied(mut o) => {
                let current = o.get().live(now).then_some(o.get().value.as_slice());
                if current != expected {
                    return false;
                }
                o.insert(Entry {
                    value,
                    expires: expiry(ttl_ms),
                });
                true
            }
            dashmap::Entry::Vacant(v) => {
                if expected.is_some() {
                    return false;
                }
                v.insert(Entry {
                    value,
                    expires: expiry(ttl_ms),
                });
                true
            }
        };
        self.wrote();
        swapped
    }
}

/// `INCRBY`, and an expiry only on a key this call created. KEYS[1]; ARGV: delta, ttl ms.
const INCREMENT: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#;

/// Compare-and-swap. KEYS[1]; ARGV: has-expected (0/1), expected, value, ttl ms (0: none).
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
local match
if ARGV[1] == '0' then match = (cur == false) else match = (cur == ARGV[2]) end
if not match then return 0 end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"#;

/// The Redis side of plugin key-value stores, one per loaded config: its settings and
/// scripts. The connections are [`RedisConn`]s.
pub struct RedisKv {
    config: RedisConfig,
    increment: Script,
    cas: Script,
}

impl RedisKv {
    pub fn new(config: RedisConfig) -> Self {
        RedisKv {
            config,
            increment: Script::new(INCREMENT),
            cas: Script::new(CAS),
        }
    }
}

/// One worker's connections to the Redis of plugin key-value stores: one per [`RedisKv`]
/// that the worker's plugins were granted.
#[derive(Default)]
pub struct WorkerRedis {
    conns: Vec<Arc<RedisConn>>,
}

impl WorkerRedis {
    fn conn(&mut self, redis: &Arc<RedisKv>) -> Arc<RedisConn> {
        if let Some(c) = self.conns.iter().find(|c| Arc::ptr_eq(&c.redis, redis)) {
            return c.clone();
        }
        let c = Arc::new(RedisConn::new(redis.clone()));
        self.conns.push(c.clone());
        c
    }
}

/// A multiplexed connection to a [`RedisKv`], made on first use inside the runtime that
/// uses it, and used only there. redis-rs drives a connection from a task on the runtime
/// that opened it: a connection shared by the workers (each its own current-thread
/// runtime) sent every other worker's round trips through that worker's event loop —
/// two cross-thread wake-ups each, and a wait whenever that worker was busy (a long
/// plugin call, a componentize-py instantiation) — and one first used while loading
/// (`configure`) would have lived on the loading runtime, which is then dropped.
pub struct RedisConn {
    redis: Arc<RedisKv>,
    conn: OnceLock<Result<ConnectionManager, String>>,
}

impl RedisConn {
    fn new(redis: Arc<RedisKv>) -> Self {
        RedisConn {
            redis,
            conn: OnceLock::new(),
        }
    }

    fn conn(&self) -> KvResult<ConnectionManager> {
        let c = self.conn.get_or_init(|| {
            let config = &self.redis.config;
            let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string())?;
            let cm = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(client, cm).map_err(|e| e.to_string())
        });
        c.clone().map_err(|e| other(format!("redis: {e}")))
    }

    fn key(&self, ns: &str, key: &str) -> String {
        format!("{}:kv:{ns}:{key}", self.redis.config.key_prefix)
    }

    /// One round trip, bounded by `[redis] timeout`.
    async fn answer<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> KvResult<T> {
        let timeout = self.redis.config.timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r.map_err(|e| other(format!("redis: {e}"))),
            Err(_) => Err(other(format!("redis did not answer within {timeout:?}"))),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> KvResult<T> {
        let mut conn = self.conn()?;
        self.answer(cmd.query_async::<T>(&mut conn)).await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> KvResult<T> {
        let mut conn = self.conn()?;
        self.answer(inv.invoke_async::<T>(&mut conn)).await
    }

    async fn keys(&self, ns: &str) -> KvResult<Vec<String>> {
        let prefix = self.key(ns, "");
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", redis_glob_escape(&prefix)))
                .arg("COUNT")
                .arg(500);
            let (next, keys): (u64, Vec<String>) = self.answer(cmd.query_async(&mut conn)).await?;
            out.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
            );
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

fn redis_glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn ttl_arg(ttl_ms: u64) -> KvResult<u64> {
    if ttl_ms == 0 {
        return Err(other("ttl-ms must be at least 1"));
    }
    Ok(ttl_ms)
}

impl HostState {
    /// The grant and namespace behind an open bucket.
    fn bucket(&self, b: &Resource<Bucket>) -> KvResult<(Backend, Arc<str>)> {
        let ns = self.table.get(b).map_err(other)?.namespace.clone();
        let g = self.kv.as_ref().ok_or(store::Error::AccessDenied)?;
        Ok((g.backend.clone(), ns))
    }
}

impl store::Host for HostState {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        let granted = self.kv.as_ref().map(|g| g.namespace.clone());
        match granted {
            Some(ns) if *ns == *identifier => {
                self.table.push(Bucket { namespace: ns }).map_err(other)
            }
            granted => {
                tracing::warn!(
                    target: "plugin",
                    plugin = &*self.plugin,
                    namespace = %identifier.escape_debug(),
                    granted = granted.as_deref().unwrap_or("(none)"),
                    "key-value access denied: the namespace is not the one granted to the plugin"
                );
                Err(store::Error::AccessDenied)
            }
        }
    }
}

impl store::HostBucket for HostState {
    async fn get(&mut self, b: Resource<Bucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        match self.bucket(&b)? {
            (Backend::Local, ns) => Ok(LOCAL.get(&local_key(&ns, &key))),
            (Backend::Redis(r), ns) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(r.key(&ns, &key));
                r.run(cmd).await
            }
        }
    }

    async fn set(&mut self, b: Resource<Bucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        match self.bucket(&b)? {
            (Backend::Local, ns) => {
                LOCAL.set(local_key(&ns, &key), value, None);
                Ok(())
            }
            (Backend::Redis(r), ns) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(r.key(&ns, &key)).arg(value);
                r.run(cmd).await
            }
        }
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> KvResult<()> {
        match self.bucket(&b)? {
            (Backend::Local, ns) => {
                LOCAL.delete(&local_key(&ns, &key));
                Ok(())
            }
            (Backend::Redis(r), ns) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(r.key(&ns, &key));
                r.run(cmd).await
            }
        }
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> KvResult<bool> {
        match self.bucket(&b)? {
            (Backend::Local, ns) => Ok(LOCAL.get(&local_key(&ns, &key)).is_some()),
            (Backend::Redis(r), ns) => {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(r.key(&ns, &key));
                r.run(cmd).await
            }
        }
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        _cursor: Option<u64>,
    ) -> KvResult<store::KeyResponse> {
        // Every key at once: namespaces of plugin state are small, and one answer keeps
        // the cursor honest for both backends.
        let keys = match self.bucket(&b)? {
            (Backend::Local, ns) => LOCAL.keys(&ns),
            (Backend::Redis(r), ns) => r.keys(&ns).await?,
        };
        Ok(store::KeyResponse { keys, cursor: None })
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(&mut self, b: Resource<Bucket>, key: String, delta: u64) -> KvResult<u64> {
        let delta = i64::try_from(delta).map_err(|_| other("delta is too large"))?;
        let v = increment(self.bucket(&b)?, key, delta, None).await?;
        u64::try_from(v).map_err(|_| other("the value is negative"))
    }
}

async fn increment(
    bucket: (Backend, Arc<str>),
    key: String,
    delta: i64,
    ttl_ms: Option<u64>,
) -> KvResult<i64> {
    match bucket {
        (Backend::Local, ns) => LOCAL.increment(local_key(&ns, &key), delta, ttl_ms),
        (Backend::Redis(r), ns) => {
            let k = r.key(&ns, &key);
            let mut inv = r.redis.increment.prepare_invoke();
            inv.key(k).arg(delta).arg(ttl_ms.unwrap_or(0));
            r.script(inv).await
        }
    }
}

impl keyvalue_ext::Host for HostState {
    async fn set_with_ttl(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> KvResult<()> {
        let ttl = ttl_arg(ttl_ms)?;
        match self.bucket(&b)? {
            (Backend::Local, ns) => {
                LOCAL.set(local_key(&ns, &key), value, Some(ttl));
                Ok(())
            }
            (Backend::Redis(r), ns) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(r.key(&ns, &key)).arg(value).arg("PX").arg(ttl);
                r.run(cmd).await
            }
        }
    }

    async fn increment_with_ttl(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> KvResult<i64> {
        let ttl = ttl_arg(ttl_ms)?;
        increment(self.bucket(&b)?, key, delta, Some(ttl)).await
    }

    async fn compare_and_swap(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> KvResult<bool> {
        let ttl = ttl_ms.map(ttl_arg).transpose()?;
        match self.bucket(&b)? {
            (Backend::Local, ns) => {
                Ok(LOCAL.compare_and_swap(local_key(&ns, &key), expected.as_deref(), value, ttl))
            }
            (Backend::Redis(r), ns) => {
                let k = r.key(&ns, &key);
                let mut inv = r.redis.cas.prepare_invoke();
                inv.key(k)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default())
                    .arg(value)
                    .arg(ttl.unwrap_or(0));
                let n: i64 = r.script(inv).await?;
                Ok(n == 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_increment_cas_and_expiry() {
        let l = Local {
            map: DashMap::new(),
            writes: AtomicU64::new(0),
        };
        let k = || local_key("ns", "n");
        assert_eq!(l.increment(k(), 2, None).unwrap(), 2);
        assert_eq!(l.increment(k(), -5, None).unwrap(), -3);
        assert_eq!(l.get(&k()).unwrap(), b"-3");
        assert!(!l.compare_and_swap(k(), Some(b"x"), b"y".to_vec(), None));
        assert!(l.compare_and_swap(k(), Some(b"-3"), b"y".to_vec(), None));
        assert!(l.increment(k(), 1, None).is_err(), "not an integer");
        assert!(!l.compare_and_swap(k(), None, b"z".to_vec(), None));
        assert!(l.compare_and_swap(local_key("ns", "new"), None, b"z".to_vec(), None));
        // An entry that expired is absent to every operation.
        l.set(k(), b"gone".to_vec(), Some(0));
        assert_eq!(l.get(&k()), None);
        assert!(l.compare_and_swap(k(), None, b"back".to_vec(), None));
        l.set(local_key("ns", "old"), b"1".to_vec(), Some(0));
        assert_eq!(l.increment(local_key("ns", "old"), 1, None).unwrap(), 1);
        let mut keys = l.keys("ns");
        keys.sort();
        assert_eq!(keys, ["n", "new", "old"]);
        assert!(l.keys("other").is_empty());
    }
}
