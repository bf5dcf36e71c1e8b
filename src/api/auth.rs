//! API-key authentication (SPEC §4: `Authorization: Bearer KEY`).
//!
//! Owns: the key table (SHA-256 digests from `[[clients]].key_sha256`, with
//! each key's optional `not_after`, swapped whole on reload), the
//! constant-time look-up, refusing expired keys, the per-key
//! seconds-to-expiry gauge, the per-source-address limit on failed
//! authentications, the audit hook, and making new keys.
//!
//! Why this shape:
//! * Only digests are configured, so the presented key is hashed and the
//!   digest compared against *every* entry with `subtle` — no early exit, so
//!   timing does not tell which entry (or whether any) matched.
//! * Brute force is throttled per source address: failures feed a `governor`
//!   keyed limiter; once an address exceeds it, it is refused with 429 before
//!   its key is even looked at, until the limiter would admit it again. IPv6
//!   sources are keyed by their /64, since one host usually owns the prefix.
//! * The table is a part of the live configuration ([`crate::live::Part`]):
//!   in the app it changes with the whole snapshot a reload swaps in; it is
//!   read once per request, with no lock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::problem::SendError;
use super::service::ClientId;
use crate::config;
use crate::live::Part;
use crate::metrics::Metrics;

/// Prefix of every API key, so leaked keys are recognisable by scanners.
pub const KEY_PREFIX: &str = "sk_live_";
/// Longest `Authorization` value considered (anything longer is malformed).
const MAX_HEADER_LEN: usize = 512;
/// Most addresses remembered as locked out; beyond it the oldest are dropped.
const MAX_BLOCKED: usize = 65_536;

/// Makes a new API key: 32 random bytes as `sk_live_<base64url>`, and the
/// hex SHA-256 that goes into `[[clients]].key_sha256`.
pub fn new_key() -> (String, String) {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    );
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

/// Why an authentication failed (for the audit log; never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`, or not visible ASCII.
    Malformed,
    /// A well-formed key that matches no client.
    UnknownKey,
    /// The address went over its failure limit: audited once, as its
    /// lock-out begins. Requests during the lock-out are refused (429) and
    /// counted in the metrics, not audited one by one, so a flood from one
    /// address cannot fill the audit log.
    LockedOut,
    /// A key that matches a client but whose `not_after` has passed.
    KeyExpired,
    /// A key of a client with `client_cert_sha256`, on a connection that
    /// presented none of those certificates.
    ClientCertMissing,
}

impl AuthFailure {
    /// A short label, e.g. for audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::LockedOut => "locked_out",
            AuthFailure::KeyExpired => "key_expired",
            AuthFailure::ClientCertMissing => "client_cert_missing",
        }
    }
}

/// Hook for the audit log. Called synchronously on the request path, so an
/// implementation should only enqueue. The default methods do nothing.
pub trait AuthAudit: Send + Sync + 'static {
    /// A request authenticated with the client's `key_index`-th key.
    fn key_used(&self, _client: &ClientId, _key_index: usize, _peer: IpAddr) {}
    /// A request failed authentication.
    fn auth_failed(&self, _peer: IpAddr, _reason: AuthFailure) {}
}

/// The audit hook used until the audit log exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAudit;

impl AuthAudit for NoAudit {}

/// Every configured key digest with its client: the API's part of the live
/// configuration.
pub struct KeyTable {
    entries: Vec<KeyEntry>,
}

struct KeyEntry {
    digest: [u8; 32],
    client: ClientId,
    index: usize,
    not_after: Option<DateTime<Utc>>,
    /// The client's certificate pins; empty = the key alone suffices.
    certs: Arc<[[u8; 32]]>,
}

impl KeyTable {
    /// The table of `clients`' keys.
    pub fn from_clients(clients: &[config::Client]) -> Self {
        let entries = clients
            .iter()
            .flat_map(|c| {
                let id = ClientId::new(&c.id);
                let certs: Arc<[[u8; 32]]> = c.client_cert_sha256.clone().into();
                c.key_sha256
                    .iter()
                    .enumerate()
                    .map(move |(index, digest)| KeyEntry {
                        digest: *digest,
                        client: id.clone(),
                        index,
                        not_after: c.key_not_after.get(index).copied().flatten(),
                        certs: certs.clone(),
                    })
            })
            .collect();
        KeyTable { entries }
    }

    /// Compares `digest` with every entry in constant time.
    fn lookup(&self, digest: &[u8; 32]) -> Option<&KeyEntry> {
        let mut found = subtle::Choice::from(0);
        let mut at: u64 = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.digest.ct_eq(digest);
            at.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.entries.get(at as usize)
        } else {
            None
        }
    }
}

/// Authenticates API requests; shared by all connections.
pub struct Authenticator {
    keys: Part<KeyTable>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    audit: Arc<dyn AuthAudit>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// 10 failed authentications per minute per source address.
    pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 10;

    /// A table of the clients' keys with the default failure limit.
    pub fn new(
        clients: &[config::Client],
        audit: Arc<dyn AuthAudit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_failure_limit(clients, audit, metrics, Self::default_failure_limit())
    }

    /// An authenticator with the default failure limit reading its key
    /// table from `keys` (the app: its part of the live snapshot).
    pub fn reading(keys: Part<KeyTable>, audit: Arc<dyn AuthAudit>, metrics: Arc<Metrics>) -> Self {
        Self::with_keys(keys, audit, metrics, Self::default_failure_limit())
    }

    fn default_failure_limit() -> NonZeroU32 {
        NonZeroU32::MIN.saturating_add(Self::DEFAULT_FAILURES_PER_MINUTE - 1)
    }

    /// As [`Authenticator::new`] with `failures_per_minute` (also the burst).
    pub fn with_failure_limit(
        clients: &[config::Client],
        audit: Arc<dyn AuthAudit>,
        metrics: Arc<Metrics>,
        failures_per_minute: NonZeroU32,
    ) -> Self {
        Self::with_keys(
            Part::own(Arc::new(KeyTable::from_clients(clients))),
            audit,
            metrics,
            failures_per_minute,
        )
    }

    /// As [`Authenticator::with_failure_limit`], the key table read from
    /// `keys`.
    pub fn with_keys(
        keys: Part<KeyTable>,
        audit: Arc<dyn AuthAudit>,
        metrics: Arc<Metrics>,
        failures_per_minute: NonZeroU32,
    ) -> Self {
        set_expiry_gauge(&metrics, &keys.load(), Utc::now());
        Authenticator {
            keys,
            failures: RateLimiter::keyed(Quota::per_minute(failures_per_minute)),
            clock: DefaultClock::default(),
            blocked: Mutex::new(HashMap::new()),
            audit,
            metrics,
        }
    }

    /// Replaces the key table of an authenticator built on its own.
    /// Requests in flight keep the old one. (In the app the table changes
    /// with the live snapshot, then [`Authenticator::publish_expiry`].)
    pub fn reload(&self, clients: &[config::Client]) {
        self.keys.set(Arc::new(KeyTable::from_clients(clients)));
        self.publish_expiry();
    }

    /// Sets the keys' seconds-to-expiry gauge from the current table.
    pub fn publish_expiry(&self) {
        set_expiry_gauge(&self.metrics, &self.table(), Utc::now());
    }

    fn table(&self) -> Arc<KeyTable> {
        self.keys.load()
    }

    /// Checks an `Authorization` header value from `peer`, on a connection
    /// without a client certificate.
    pub fn authenticate(&self, header: Option<&[u8]>, peer: IpAddr) -> Result<ClientId, SendError> {
        self.authenticate_with_cert(header, peer, None)
    }

    /// Checks an `Authorization` header value from `peer`, whose connection
    /// presented a client certificate with SHA-256 `cert` (if any): a key
    /// of a client with `client_cert_sha256` needs one of those.
    pub fn authenticate_with_cert(
        &self,
        header: Option<&[u8]>,
        peer: IpAddr,
        cert: Option<&[u8; 32]>,
    ) -> Result<ClientId, SendError> {
        let key = limiter_key(peer);
        // A lock-out refuses what failed from this address, never a valid
        // key: another party behind the same address (NAT, a proxy, a
        // /64) must not lock out a client that holds its key (issue 20
        // item 4). Keys are 256-bit random, so checking a presented key
        // during a lock-out gives a guesser nothing.
        let locked = self.locked_out(key);
        let outcome = match header {
            None => Err((AuthFailure::Missing, None)),
            Some(h) => match bearer_token(h) {
                None => Err((AuthFailure::Malformed, None)),
                Some(token) => {
                    let digest: [u8; 32] = Sha256::digest(token).into();
                    let table = self.table();
                    match table.lookup(&digest) {
                        Some(e) => match e.not_after {
                            Some(t) if t <= Utc::now() => Err((AuthFailure::KeyExpired, Some(t))),
                            _ if !cert_matches(&e.certs, cert) => {
                                Err((AuthFailure::ClientCertMissing, None))
                            }
                            _ => Ok((e.client.clone(), e.index)),
                        },
                        None => Err((AuthFailure::UnknownKey, None)),
                    }
                }
            },
        };
        match outcome {
            Ok((client, index)) => {
                self.audit.key_used(&client, index, peer);
                Ok(client)
            }
            Err(_) if locked.is_some() => {
                // Already locked out: counted, not audited again.
                self.metrics.auth_failures.inc();
                Err(SendError::AuthLockedOut {
                    retry_after: locked.unwrap_or_default(),
                })
            }
            Err((reason, expired_at)) => {
                self.metrics.auth_failures.inc();
                match self.record_failure(key) {
                    Some(wait) => {
                        self.audit.auth_failed(peer, AuthFailure::LockedOut);
                        Err(SendError::AuthLockedOut { retry_after: wait })
                    }
                    None => {
                        self.audit.auth_failed(peer, reason);
                        Err(match (reason, expired_at) {
                            (_, Some(t)) => SendError::KeyExpired {
                                not_after: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            },
                            (AuthFailure::ClientCertMissing, _) => SendError::ClientCertRequired,
                            _ => SendError::Unauthorized,
                        })
                    }
                }
            }
        }
    }

    /// Time left on a lock-out of this address, if any.
    fn locked_out(&self, key: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock();
        let until = *blocked.get(&key)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failure; returns the lock-out time when over the limit.
    fn record_failure(&self, key: IpAddr) -> Option<Duration> {
        let not_until = self.failures.check_key(&key).err()?;
        let wait = not_until
            .wait_time_from(self.clock.now())
            .max(Duration::from_secs(1));
        let mut blocked = self.blocked.lock();
        if blocked.len() >= MAX_BLOCKED {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_BLOCKED {
                // Still full: forget an arbitrary entry rather than grow.
                if let Some(k) = blocked.keys().next().copied() {
                    blocked.remove(&k);
                }
            }
        }
        blocked.insert(key, Instant::now() + wait);
        Some(wait)
    }

    /// Drops limiter state that no longer matters; call about once a minute.
    pub fn housekeeping(&self) {
        set_expiry_gauge(&self.metrics, &self.table(), Utc::now());
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        let mut blocked = self.blocked.lock();
        blocked.retain(|_, until| *until > now);
    }

    /// Addresses with failure state (for tests and diagnostics).
    pub fn tracked_addresses(&self) -> usize {
        self.failures.len()
    }
}

/// Whether the presented certificate satisfies a client's pins: always
/// when it has none, else when it is one of them.
fn cert_matches(pins: &[[u8; 32]], cert: Option<&[u8; 32]>) -> bool {
    if pins.is_empty() {
        return true;
    }
    let Some(cert) = cert else { return false };
    pins.iter()
        .fold(subtle::Choice::from(0), |any, p| any | p.ct_eq(cert))
        .into()
}

/// Whether any client pins a certificate: then the API listener asks for
/// one ([`crate::tls::ClientAuth::Optional`]).
pub fn any_client_cert(clients: &[config::Client]) -> bool {
    clients.iter().any(|c| !c.client_cert_sha256.is_empty())
}

/// Sets `sms_conduit_api_key_expiry_seconds` for every key with a
/// `not_after` (negative once expired); keys without one have no series.
/// Reset first, so a key removed on reload loses its series.
fn set_expiry_gauge(metrics: &Metrics, table: &KeyTable, now: DateTime<Utc>) {
    metrics.api_key_expiry.reset();
    for e in &table.entries {
        if let Some(t) = e.not_after {
            metrics
                .api_key_expiry
                .with_label_values(&[e.client.as_str(), &e.index.to_string()])
                .set((t - now).num_seconds());
        }
    }
}

/// The token of a `Bearer` credential, if well formed.
fn bearer_token(h: &[u8]) -> Option<&[u8]> {
    if h.len() > MAX_HEADER_LEN {
        return None;
    }
    let (scheme, rest) = h.split_at(h.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    let ok = !token.is_empty() && token.iter().all(|b| b.is_ascii_graphic());
    ok.then_some(token)
}

/// The limiter key for an address: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, keys: &[&str]) -> config::Client {
        config::Client {
            id: id.into(),
            key_sha256: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
            ..Default::default()
        }
    }

    fn auth(limit: u32) -> Authenticator {
        Authenticator::with_failure_limit(
            &[client("a", &["ka1", "ka2"]), client("b", &["kb"])],
            Arc::new(NoAudit),
            Arc::new(Metrics::new()),
            NonZeroU32::new(limit).unwrap(),
        )
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[derive(Default)]
    struct Recorded(Mutex<Vec<AuthFailure>>);
    impl AuthAudit for Recorded {
        fn auth_failed(&self, _peer: IpAddr, why: AuthFailure) {
            self.0.lock().push(why);
        }
    }

    #[test]
    fn a_flood_from_a_locked_out_address_is_audited_once_not_per_request() {
        let rec = Arc::new(Recorded::default());
        let metrics = Arc::new(Metrics::new());
        let a = Authenticator::with_failure_limit(
            &[client("a", &["ka1"])],
            rec.clone(),
            metrics.clone(),
            NonZeroU32::new(3).unwrap(),
        );
        for _ in 0..1000 {
            let _ = a.authenticate(Some(b"Bearer guess"), PEER);
        }
        // Three failures within the limit, then the lock-out's start; the
        // other 996 requests are only counted.
        assert_eq!(
            *rec.0.lock(),
            vec![
                AuthFailure::UnknownKey,
                AuthFailure::UnknownKey,
                AuthFailure::UnknownKey,
                AuthFailure::LockedOut
            ]
        );
        assert_eq!(metrics.auth_failures.get(), 1000);
    }

    #[test]
    fn finds_the_right_client() {
        let a = auth(10);
        assert_eq!(
            a.authenticate(Some(b"Bearer ka2"), PEER).unwrap().as_str(),
            "a"
        );
        assert_eq!(
            a.authenticate(Some(b"bearer kb"), PEER).unwrap().as_str(),
            "b"
        );
        for bad in [
            &b"Bearer nope"[..],
            b"Basic ka1",
            b"Bearer",
            b"Bearer  ",
            b"ka1",
        ] {
            assert_eq!(
                a.authenticate(Some(bad), PEER),
                Err(SendError::Unauthorized)
            );
        }
        assert_eq!(a.authenticate(None, PEER), Err(SendError::Unauthorized));
    }

    /// Issue 20 item 4: a lock-out refuses the failing party, never a
    /// valid key behind the same address (before: the valid key got 429).
    #[test]
    fn a_lock_out_refuses_failures_but_never_a_valid_key() {
        let a = auth(3);
        for _ in 0..3 {
            assert_eq!(
                a.authenticate(Some(b"Bearer x"), PEER),
                Err(SendError::Unauthorized)
            );
        }
        assert!(matches!(
            a.authenticate(Some(b"Bearer x"), PEER),
            Err(SendError::AuthLockedOut { .. })
        ));
        // The victim behind the same address still gets in, every time.
        for _ in 0..40 {
            assert!(a.authenticate(Some(b"Bearer ka1"), PEER).is_ok());
            assert!(matches!(
                a.authenticate(Some(b"Bearer y"), PEER),
                Err(SendError::AuthLockedOut { .. })
            ));
        }
        // Another address is unaffected.
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(a.authenticate(Some(b"Bearer ka1"), other).is_ok());
    }

    #[test]
    fn an_expired_key_is_refused_with_its_own_detail_and_audited() {
        let rec = Arc::new(Recorded::default());
        let metrics = Arc::new(Metrics::new());
        let mut c = client("a", &["old", "new"]);
        c.key_not_after = vec![
            Some(Utc::now() - chrono::Duration::seconds(1)),
            Some(Utc::now() + chrono::Duration::days(30)),
        ];
        let a = Authenticator::new(&[c], rec.clone(), metrics.clone());
        let refused = a.authenticate(Some(b"Bearer old"), PEER).unwrap_err();
        assert!(matches!(refused, SendError::KeyExpired { .. }));
        let p = refused.problem();
        assert_eq!(p.status.as_u16(), 401);
        assert_eq!(refused.code(), "unauthorized");
        assert!(p.detail.contains("expired"), "{}", p.detail);
        assert_eq!(*rec.0.lock(), vec![AuthFailure::KeyExpired]);
        assert_eq!(
            a.authenticate(Some(b"Bearer new"), PEER).unwrap().as_str(),
            "a"
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        let line = |k: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "sms_conduit_api_key_expiry_seconds{{client=\"a\",key=\"{k}\"}}"
                    ))
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        };
        assert!(line("0").unwrap() < 0);
        assert!(line("1").unwrap() > 29 * 86_400);
    }

    #[test]
    fn reload_swaps_keys() {
        let a = auth(10);
        a.reload(&[client("c", &["kc"])]);
        assert!(a.authenticate(Some(b"Bearer ka1"), PEER).is_err());
        assert_eq!(
            a.authenticate(Some(b"Bearer kc"), PEER).unwrap().as_str(),
            "c"
        );
    }

    #[test]
    fn new_keys_are_distinct_and_hash_matches() {
        let (k1, h1) = new_key();
        let (k2, _) = new_key();
        assert_ne!(k1, k2);
        assert!(k1.starts_with(KEY_PREFIX));
        assert_eq!(k1.len(), KEY_PREFIX.len() + 43);
        assert_eq!(h1, hex::encode(Sha256::digest(k1.as_bytes())));
    }

    #[test]
    fn ipv6_keyed_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(limiter_key(a), limiter_key(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limiter_key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
