//! Guards before and around a bind: per-address slots for unbound
//! connections, the per-address throttle of failed binds, and the hash an
//! unknown system_id is logged as.

use super::*;

/// Failed binds a source address may make at once before it is throttled.
/// A carrier that mistyped a password retries a few times; a guesser makes
/// hundreds.
pub(super) const BIND_FAILURE_BURST: f64 = 5.0;

/// Each failed bind allowance comes back after this long (5 a minute).
pub(super) const BIND_FAILURE_REFILL: Duration = Duration::from_secs(12);

/// Source addresses whose failures are remembered; beyond it the entries
/// that have fully recovered go first, so the table cannot grow without
/// bound under a spread-out attack.
pub(super) const MAX_TRACKED_SOURCES: usize = 4096;

/// A source address's failed-bind allowance (a token bucket).
pub(super) struct FailBucket {
    pub(super) tokens: f64,
    pub(super) at: Instant,
    /// A throttled refusal was logged and audited since the bucket last
    /// had room: the next ones are only counted.
    pub(super) announced: bool,
}

impl FailBucket {
    pub(super) fn refill(&mut self, now: Instant) {
        let add = now.duration_since(self.at).as_secs_f64() / BIND_FAILURE_REFILL.as_secs_f64();
        self.tokens = (self.tokens + add).min(BIND_FAILURE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.announced = false;
        }
    }
}

/// One accepted connection's share of the limits, given back on drop.
pub(super) struct Slot {
    pub(super) inner: Arc<Inner>,
    pub(super) ip: IpAddr,
    pub(super) unbound: bool,
}

impl Slot {
    /// Counts a new connection from `ip`, or refuses it (counted in
    /// `smpp_connections_refused`) when a limit is reached.
    pub(super) fn take(inner: &Arc<Inner>, ip: IpAddr) -> Option<Slot> {
        let limits = inner.opts.limits;
        let refused = |reason: &str| {
            inner
                .deps
                .metrics
                .smpp_connections_refused
                .with_label_values(&[reason])
                .inc();
            None
        };
        if inner.conns.load(Ordering::Relaxed) >= limits.max_connections {
            return refused("max_connections");
        }
        {
            let mut u = inner.unbound.lock();
            let n = u.entry(ip).or_insert(0);
            if *n >= limits.max_unbound_per_address {
                return refused("per_address");
            }
            *n += 1;
        }
        inner.conns.fetch_add(1, Ordering::Relaxed);
        inner.deps.metrics.smpp_server_connections.inc();
        Some(Slot {
            inner: inner.clone(),
            ip,
            unbound: true,
        })
    }

    pub(super) fn release_unbound(&mut self) {
        if !std::mem::replace(&mut self.unbound, false) {
            return;
        }
        let mut u = self.inner.unbound.lock();
        if let Some(n) = u.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.ip);
            }
        }
    }

    /// The connection bound: it no longer counts against its address's
    /// unbound cap (`max_binds` bounds it now).
    pub(super) fn bound(&mut self) {
        self.release_unbound();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_unbound();
        self.inner.conns.fetch_sub(1, Ordering::Relaxed);
        self.inner.deps.metrics.smpp_server_connections.dec();
    }
}

/// A short, stable stand-in for an attacker-chosen system_id in logs: the
/// first 12 hex digits of its SHA-256 (it may be a phone number).
pub(super) fn sid_hash(system_id: &str) -> String {
    let d = Sha256::digest(system_id.as_bytes());
    hex::encode(&d[..6])
}

/// Whether `ip` may try a bind now (it has failed-bind allowance left).
/// `Err(first)`: throttled; `first` for the first throttled attempt since
/// it last had room (that one is logged and audited, the rest counted).
pub(super) fn may_try(inner: &Inner, ip: IpAddr) -> Result<(), bool> {
    let mut f = inner.failures.lock();
    let Some(b) = f.get_mut(&ip) else {
        return Ok(());
    };
    b.refill(Instant::now());
    if b.tokens >= 1.0 {
        return Ok(());
    }
    Err(!std::mem::replace(&mut b.announced, true))
}

/// Takes one failed-bind allowance from `ip`.
pub(super) fn charge_failure(inner: &Inner, ip: IpAddr) {
    let now = Instant::now();
    let mut f = inner.failures.lock();
    if f.len() >= MAX_TRACKED_SOURCES && !f.contains_key(&ip) {
        f.retain(|_, b| {
            b.refill(now);
            b.tokens < BIND_FAILURE_BURST
        });
        if f.len() >= MAX_TRACKED_SOURCES {
            if let Some(k) = f.keys().next().copied() {
                f.remove(&k);
            }
        }
    }
    let b = f.entry(ip).or_insert(FailBucket {
        tokens: BIND_FAILURE_BURST,
        at: now,
        announced: false,
    });
    b.refill(now);
    b.tokens = (b.tokens - 1.0).max(0.0);
}
