//! The Redis backend: the limits a fleet of gateways shares. A request's Redis limits are
//! reserved together by one Lua script (one `EVALSHA` round trip, all or nothing, on
//! Redis's clock) and settled by another. The connection is a `redis::aio::
//! ConnectionManager` (one multiplexed connection, reconnected in the background after a
//! failure); every call is bounded by `[redis] timeout`, so a Redis that is gone, slow or
//! unreachable costs a request at most that long before its limit's `on_backend_error`
//! decides.
//!
//! Keys: `PREFIX:LIMIT:DEFINITION-HASH:KEY`. A window is a hash from absolute sub-window
//! number to its count (the arithmetic of `window.rs`); requests in flight are a sorted
//! set of request ids scored by when their lease ends ([`LEASE_MS`]), so the slots of a
//! gateway that died free themselves.

use super::window::SLOTS;
use crate::config::RedisConfig;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::time::Duration;

/// How long a request in flight holds its concurrency slot in Redis unless released.
pub const LEASE_MS: u64 = 15 * 60 * 1000;

/// Reserves every key or none. KEYS: one per limit. ARGV[1]: sub-windows per window; then
/// five per key: kind (`w` window, `c` concurrency), limit, window (ms; the lease for
/// `c`), cost, member (the request id for `c`). Returns `{1, now, slot, remaining, reset,
/// …}` or `{0, index, retry_ms}`.
const RESERVE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = tonumber(ARGV[1])
local function expiry(k, w) return math.ceil((k + slots + 1) * w / slots) end
local out = {1, now}
local heads = {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 5
  local kind, limit, w, cost = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if kind == 'w' then
    local head = math.floor(now * slots / w)
    local h = redis.call('HGETALL', key)
    local total, live = 0, {}
    for j = 1, #h, 2 do
      local k = tonumber(h[j])
      if k < head - slots then
        redis.call('HDEL', key, h[j])
      else
        local v = tonumber(h[j + 1])
        total = total + v
        if v > 0 then live[#live + 1] = {k, v} end
      end
    end
    table.sort(live, function(x, y) return x[1] < y[1] end)
    if total + cost > limit then
      local retry = -1
      if cost <= limit then
        local freed = 0
        for _, e in ipairs(live) do
          freed = freed + e[2]
          if total - freed + cost <= limit then retry = expiry(e[1], w) - now break end
        end
      end
      return {0, i, retry}
    end
    local newest = nil
    if cost > 0 then newest = head elseif #live > 0 then newest = live[#live][1] end
    local reset = 0
    if newest then reset = expiry(newest, w) - now end
    heads[i] = head
    out[#out + 1] = head
    out[#out + 1] = limit - total - cost
    out[#out + 1] = reset
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local n = redis.call('ZCARD', key)
    if n + 1 > limit then return {0, i, 1000} end
    out[#out + 1] = 0
    out[#out + 1] = limit - n - 1
    out[#out + 1] = 0
  end
end
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 5
  local kind, w, cost = ARGV[a + 1], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if kind == 'w' then
    if cost > 0 then redis.call('HINCRBY', key, heads[i], cost) end
    redis.call('PEXPIRE', key, 2 * w + 1000)
  else
    redis.call('ZADD', key, now + w, ARGV[a + 5])
    redis.call('PEXPIRE', key, w)
  end
end
return out
"#;

/// Settles reservations. KEYS: one per limit. ARGV[1]: sub-windows per window; then four
/// per key: kind, window (ms), the reservation's sub-window, and the difference to
/// charge (`w`) or the request id to release (`c`).
const SETTLE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 4
  local kind, w, slot = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if kind == 'w' then
    local delta = tonumber(ARGV[a + 4])
    local head = math.floor(now * slots / w)
    if delta > 0 then
      redis.call('HINCRBY', key, head, delta)
      redis.call('PEXPIRE', key, 2 * w + 1000)
    elseif delta < 0 and slot >= head - slots then
      local v = tonumber(redis.call('HGET', key, slot) or '0')
      local back = math.min(-delta, v)
      if back > 0 then redis.call('HINCRBY', key, slot, -back) end
    end
  else
    redis.call('ZREM', key, ARGV[a + 4])
  end
end
return 1
"#;

/// One key of a reservation.
pub struct Reserve<'a> {
    pub key: &'a str,
    /// `None`: a concurrency slot (with this request id).
    pub window_ms: Option<u64>,
    pub limit: u64,
    pub cost: u64,
    pub member: &'a str,
}

/// One key of a settlement.
pub struct Settle {
    pub key: String,
    /// `None`: release the concurrency slot `member`.
    pub window_ms: Option<u64>,
    pub slot: u64,
    pub delta: i64,
    pub member: String,
}

/// What Redis answered to a reservation.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Per key: (sub-window, remaining, reset ms).
    Admitted(Vec<(u64, u64, u64)>),
    /// The key at this index did not fit; it may after this long (`None`: never).
    Refused { index: usize, retry_ms: Option<u64> },
}

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
}

/// The connection the fleet's limits share.
pub struct Redis {
    pub config: RedisConfig,
    conn: ConnectionManager,
    reserve: Script,
    settle: Script,
}

impl Redis {
    /// Connects lazily (the first call connects); must run inside a tokio runtime.
    pub fn new(config: RedisConfig) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string())?;
        let cm = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, cm).map_err(|e| e.to_string())?;
        Ok(Redis {
            config,
            conn,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
        })
    }

    /// The Redis key of one limit's key.
    pub fn key(&self, limit: &str, hash: u64, key: &str) -> String {
        format!("{}:{limit}:{hash:016x}:{key}", self.config.key_prefix)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisError::Timeout(self.config.timeout)),
        }
    }

    /// Reserves `items` (all or none) in one round trip.
    pub async fn reserve(&self, items: &[Reserve<'_>]) -> Result<Answer, RedisError> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(SLOTS);
        for r in items {
            inv.key(r.key);
            match r.window_ms {
                Some(w) => inv.arg("w").arg(r.limit).arg(w).arg(r.cost).arg(""),
                None => inv
                    .arg("c")
                    .arg(r.limit)
                    .arg(LEASE_MS)
                    .arg(r.cost)
                    .arg(r.member),
            };
        }
        let mut conn = self.conn.clone();
        let v: Vec<i64> = self.bounded(inv.invoke_async(&mut conn)).await?;
        parse_reserve(&v, items.len()).ok_or_else(|| RedisError::Unexpected(format!("{v:?}")))
    }

    /// Settles `items` in one round trip.
    pub async fn settle(&self, items: &[Settle]) -> Result<(), RedisError> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(SLOTS);
        for s in items {
            inv.key(&s.key);
            match s.window_ms {
                Some(w) => inv.arg("w").arg(w).arg(s.slot).arg(s.delta),
                None => inv.arg("c").arg(0).arg(0).arg(&s.member),
            };
        }
        let mut conn = self.conn.clone();
        let _: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

fn parse_reserve(v: &[i64], n: usize) -> Option<Answer> {
    match v {
        [0, index, retry] => Some(Answer::Refused {
            index: usize::try_from(*index).ok()?.checked_sub(1)?,
            retry_ms: u64::try_from(*retry).ok(),
        }),
        [1, _now, rest @ ..] if rest.len() == 3 * n => Some(Answer::Admitted(
            rest.chunks(3)
                .map(|c| (c[0].max(0) as u64, c[1].max(0) as u64, c[2].max(0) as u64))
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        assert_eq!(
            parse_reserve(&[1, 5, 7, 90, 1000, 0, 3, 0], 2),
            Some(Answer::Admitted(vec![(7, 90, 1000), (0, 3, 0)]))
        );
        assert_eq!(
            parse_reserve(&[0, 2, -1], 2),
            Some(Answer::Refused {
                index: 1,
                retry_ms: None
            })
        );
        assert_eq!(parse_reserve(&[1, 5, 7], 2), None);
    }
}
