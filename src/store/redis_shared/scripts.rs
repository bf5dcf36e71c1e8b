//! The Lua scripts of fleet mode: each checks and changes its keys in one
//! step on Redis's clock (EVALSHA, then EVAL on NOSCRIPT).

use redis::Script;

/// Checks opt-out, campaign GCRA, number GCRA and daily cap, then takes them
/// all, or nothing. Times in µs from Redis's `TIME`; TATs written with
/// `%.0f` (Lua 5.1 would print large numbers in exponent form).
/// Returns `{0,0}` admitted, `{1,0}` opted out, `{2,wait_us}` rate
/// limited, `{3,0}` daily cap reached.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
if ARGV[8] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[8]) == 1 then
  return {1, 0}
end
local function probe(key, interval, tol)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new = tat + interval * n
  local ahead = new - now
  if ahead <= tol then return new, 0 end
  if interval * n > tol then
    if tat <= now then return new, 0 end
    return nil, tat - now
  end
  return nil, ahead - tol
end
local c_new, c_wait = probe(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if not c_new then return {2, math.floor(c_wait)} end
local n_int = tonumber(ARGV[4])
local n_new = nil
if n_int > 0 then
  local w
  n_new, w = probe(KEYS[2], n_int, tonumber(ARGV[5]))
  if not n_new then return {2, math.floor(w)} end
end
local cap = tonumber(ARGV[6])
if cap > 0 then
  local cur = tonumber(redis.call('GET', KEYS[3])) or 0
  if cur + n > cap then return {3, 0} end
end
local function keep(key, new)
  redis.call('SET', key, string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
keep(KEYS[1], c_new)
if n_new then keep(KEYS[2], n_new) end
if cap > 0 then
  redis.call('INCRBY', KEYS[3], n)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
end
return {0, 0}
"#;

/// Gives back what [`ADMIT_LUA`] took: the TATs move back by the cells,
/// the daily counter down (never below zero); TTLs kept.
const REFUND_LUA: &str = r#"
local n = tonumber(ARGV[1])
local function back(key, interval)
  local tat = tonumber(redis.call('GET', key))
  if tat then
    redis.call('SET', key, string.format('%.0f', tat - interval * n), 'KEEPTTL')
  end
end
back(KEYS[1], tonumber(ARGV[2]))
if tonumber(ARGV[3]) > 0 then back(KEYS[2], tonumber(ARGV[3])) end
if ARGV[4] == '1' then
  local cur = tonumber(redis.call('GET', KEYS[3]))
  if cur then
    local new = cur - n
    if new < 0 then new = 0 end
    redis.call('SET', KEYS[3], string.format('%.0f', new), 'KEEPTTL')
  end
end
return 0
"#;

/// INCRBY under a cap: `{1,new}` added, `{0,current}` refused.
const ADD_DAILY_LUA: &str = r#"
local n = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1])) or 0
if cap > 0 and cur + n > cap then return {0, cur} end
local new = redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, new}
"#;

/// DECRBY that stops at zero and keeps the TTL.
const RELEASE_DAILY_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur then
  local new = cur - tonumber(ARGV[1])
  if new < 0 then new = 0 end
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'KEEPTTL')
end
return 0
"#;

/// Marks a claimed idempotency key done (its JSON decoded and written back
/// with the message id and the outcome), keeping its TTL; 0 when the key
/// is not claimed (expired, or forgotten).
const FINISH_IDEM_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local r = cjson.decode(v)
r.state = 'done'
r.message_id = ARGV[1]
r.outcome = cjson.decode(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(r), 'KEEPTTL')
return 1
"#;

/// Writes a message's status projection unless the one there is newer
/// (`updated_ms`): a send's projection and its first receipt's may race.
const PROJECT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, old = pcall(cjson.decode, v)
  if ok and tonumber(old.updated_ms) and tonumber(old.updated_ms) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
return 1
"#;

pub(super) struct Scripts {
    pub(super) project: Script,
    pub(super) finish_idem: Script,
    pub(super) admit: Script,
    pub(super) refund: Script,
    pub(super) add_daily: Script,
    pub(super) release_daily: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            project: Script::new(PROJECT_LUA),
            finish_idem: Script::new(FINISH_IDEM_LUA),
            admit: Script::new(ADMIT_LUA),
            refund: Script::new(REFUND_LUA),
            add_daily: Script::new(ADD_DAILY_LUA),
            release_daily: Script::new(RELEASE_DAILY_LUA),
        }
    }
}

pub(super) fn gcra_us(per_minute: u32, burst: u32) -> (u64, u64) {
    let interval = 60_000_000 / u64::from(per_minute.max(1));
    (interval, interval * u64::from(burst.max(1)))
}
