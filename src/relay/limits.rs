//! 10DLC throughput limits counted in segments: per campaign (AT&T TPM,
//! shared by its numbers) and per sender number (Verizon). Carrier-account
//! pacing (`max_tps`) lives in the SMPP pool; brand daily caps in the shared
//! state (they must survive restarts).
//!
//! Why not `governor` here: a request is checked against *several* limiters
//! at once (campaign and number), and the rule is that a refused request
//! consumes nothing. governor's GCRA state can be tested or consumed, but not
//! tested across two limiters and then committed or rolled back together. The
//! same GCRA (generic cell rate algorithm) is a dozen lines, so it is written
//! here with an all-or-nothing check under one short, never-awaited lock, and
//! with an exact `Retry-After`. (governor still guards the API's failed-auth
//! limiter, where one limiter decides alone.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Config;
use crate::types::E164;

/// One GCRA bucket: `rate` cells per `period`, `burst` at once.
#[derive(Debug)]
struct Gcra {
    /// Time one cell takes to be earned back.
    interval: Duration,
    /// How far the theoretical arrival time may run ahead of now.
    tolerance: Duration,
    /// Theoretical arrival time of the next cell.
    tat: Option<Instant>,
}

impl Gcra {
    fn per_minute(rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(60) / rate.max(1);
        Gcra {
            interval,
            tolerance: interval * burst.max(1),
            tat: None,
        }
    }

    /// The new TAT if `n` cells are taken at `now`, or how long to wait.
    fn probe(&self, now: Instant, n: u32) -> Result<Instant, Duration> {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let new_tat = tat + self.interval * n;
        let ahead = new_tat.saturating_duration_since(now);
        if ahead <= self.tolerance {
            Ok(new_tat)
        } else if self.interval * n > self.tolerance {
            // More cells than the burst holds (a long text on a slow
            // campaign): admitted when the bucket is empty, running it into
            // debt so the average rate still holds; until then the wait is
            // the time for it to empty. Refusing it outright would make the
            // `Retry-After` of SPEC §4 a promise never kept.
            if tat <= now {
                Ok(new_tat)
            } else {
                Err(tat - now)
            }
        } else {
            Err(ahead - self.tolerance)
        }
    }
}

/// Why a send was refused by the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the campaign or number rate; retry after the duration.
    RateLimited(Duration),
}

/// The limiters of every campaign and number in a config.
pub struct Limits {
    // One std Mutex for all buckets: the critical section is a few
    // arithmetic operations and is never held across an await.
    inner: Mutex<Buckets>,
}

struct Buckets {
    campaigns: HashMap<String, Gcra>,
    numbers: HashMap<E164, Gcra>,
}

impl Limits {
    /// Builds the buckets of every campaign and sender number in `cfg`.
    pub fn new(cfg: &Config) -> Self {
        let mut campaigns = HashMap::new();
        let mut numbers = HashMap::new();
        for c in &cfg.campaigns {
            campaigns.insert(
                c.id.clone(),
                Gcra::per_minute(c.segments_per_minute, c.burst),
            );
            if c.number_segments_per_minute > 0 {
                // A number's burst is at most the campaign burst.
                let burst = c.burst.min(c.number_segments_per_minute).max(1);
                for n in &c.numbers {
                    numbers.insert(
                        n.clone(),
                        Gcra::per_minute(c.number_segments_per_minute, burst),
                    );
                }
            }
        }
        Limits {
            inner: Mutex::new(Buckets { campaigns, numbers }),
        }
    }

    /// Keeps what each campaign and number present in both has already
    /// spent in `old` (a reload's previous limits): a SIGHUP must not hand
    /// every campaign a fresh burst over the carrier's TPM. A bucket whose
    /// rate changed keeps its debt too; it is paid back at the new rate.
    pub fn carry_over_from(&self, old: &Limits) {
        let old = old.inner.lock();
        let mut new = self.inner.lock();
        let Buckets { campaigns, numbers } = &mut *new;
        for (k, g) in campaigns.iter_mut() {
            if let Some(o) = old.campaigns.get(k) {
                g.tat = o.tat;
            }
        }
        for (k, g) in numbers.iter_mut() {
            if let Some(o) = old.numbers.get(k) {
                g.tat = o.tat;
            }
        }
    }

    /// Takes `segments` cells from the campaign and the sender number, both
    /// or neither. Unknown campaigns are not limited here (authorisation
    /// refuses them before).
    pub fn take(&self, campaign: &str, from: &E164, segments: u32) -> Result<(), Refusal> {
        self.take_at(Instant::now(), campaign, from, segments)
    }

    fn take_at(
        &self,
        now: Instant,
        campaign: &str,
        from: &E164,
        segments: u32,
    ) -> Result<(), Refusal> {
        let mut b = self.inner.lock();
        let Buckets { campaigns, numbers } = &mut *b;
        let c_new = match campaigns.get(campaign) {
            Some(g) => Some(g.probe(now, segments).map_err(Refusal::RateLimited)?),
            None => None,
        };
        let n_new = match numbers.get(from) {
            Some(g) => Some(g.probe(now, segments).map_err(Refusal::RateLimited)?),
            None => None,
        };
        if let (Some(t), Some(g)) = (c_new, campaigns.get_mut(campaign)) {
            g.tat = Some(t);
        }
        if let (Some(t), Some(g)) = (n_new, numbers.get_mut(from)) {
            g.tat = Some(t);
        }
        Ok(())
    }

    /// Gives back cells taken for a send that was then refused for another
    /// reason (daily cap, opt-out, no route), so it consumes nothing.
    pub fn refund(&self, campaign: &str, from: &E164, segments: u32) {
        let mut b = self.inner.lock();
        let Buckets { campaigns, numbers } = &mut *b;
        for g in [campaigns.get_mut(campaign), numbers.get_mut(from)]
            .into_iter()
            .flatten()
        {
            if let Some(t) = g.tat {
                g.tat = t.checked_sub(g.interval * segments);
            }
        }
    }
}

impl crate::store::shared::LocalCells for Limits {
    fn take_cells(&self, campaign: &str, from: &E164, segments: u32) -> Result<(), Duration> {
        self.take(campaign, from, segments)
            .map_err(|Refusal::RateLimited(d)| d)
    }

    fn refund_cells(&self, campaign: &str, from: &E164, segments: u32) {
        self.refund(campaign, from, segments);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(spm: u32, burst: u32, nspm: u32) -> (Limits, E164) {
        let n = E164::parse("+15551230001").unwrap();
        let mut campaigns = HashMap::new();
        campaigns.insert("C".to_string(), Gcra::per_minute(spm, burst));
        let mut numbers = HashMap::new();
        if nspm > 0 {
            numbers.insert(n.clone(), Gcra::per_minute(nspm, burst.min(nspm)));
        }
        (
            Limits {
                inner: Mutex::new(Buckets { campaigns, numbers }),
            },
            n,
        )
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let (l, n) = limits(300, 5, 0);
        let now = Instant::now();
        let results: Vec<_> = (0..50).map(|_| l.take_at(now, "C", &n, 1)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
        match &results[5] {
            Err(Refusal::RateLimited(d)) => assert_eq!(*d, Duration::from_millis(200)),
            other => panic!("{other:?}"),
        }
        // After 200 ms one more cell is earned back.
        assert!(l
            .take_at(now + Duration::from_millis(200), "C", &n, 1)
            .is_ok());
        assert!(l
            .take_at(now + Duration::from_millis(200), "C", &n, 1)
            .is_err());
    }

    #[test]
    fn a_reload_keeps_what_was_spent() {
        let (old, n) = limits(300, 5, 60);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(old.take_at(now, "C", &n, 1).is_ok());
        }
        let (new, _) = limits(300, 5, 60);
        new.carry_over_from(&old);
        assert!(
            new.take_at(now, "C", &n, 1).is_err(),
            "a reload handed out a fresh burst"
        );
        // A campaign the old limits did not know starts with its burst.
        let (fresh, _) = limits(300, 5, 60);
        assert!(fresh.take_at(now, "C", &n, 1).is_ok());
    }

    #[test]
    fn segments_cost_cells() {
        let (l, n) = limits(60, 5, 0);
        let now = Instant::now();
        assert!(l.take_at(now, "C", &n, 3).is_ok());
        assert!(l.take_at(now, "C", &n, 3).is_err(), "3 + 3 > burst 5");
        assert!(l.take_at(now, "C", &n, 2).is_ok());
    }

    #[test]
    fn refused_request_consumes_nothing() {
        // Number bucket tighter than the campaign's: when the number refuses,
        // the campaign keeps its cells.
        let n = E164::parse("+15551230001").unwrap();
        let other = E164::parse("+15551230002").unwrap();
        let mut campaigns = HashMap::new();
        campaigns.insert("C".to_string(), Gcra::per_minute(600, 10));
        let mut numbers = HashMap::new();
        numbers.insert(n.clone(), Gcra::per_minute(60, 2));
        let l = Limits {
            inner: Mutex::new(Buckets { campaigns, numbers }),
        };
        let now = Instant::now();
        assert!(l.take_at(now, "C", &n, 1).is_ok());
        assert!(l.take_at(now, "C", &n, 1).is_ok());
        for _ in 0..5 {
            assert!(l.take_at(now, "C", &n, 1).is_err(), "number bucket is full");
        }
        // The five refusals took nothing from the campaign: 8 of 10 remain.
        for i in 0..8 {
            assert!(l.take_at(now, "C", &other, 1).is_ok(), "cell {i}");
        }
        assert!(l.take_at(now, "C", &other, 1).is_err());
        // Refund gives cells back.
        l.refund("C", &other, 1);
        assert!(l.take_at(now, "C", &other, 1).is_ok());
    }

    #[test]
    fn oversized_request_waits_for_an_empty_bucket() {
        let (l, n) = limits(60, 2, 0);
        let now = Instant::now();
        assert!(l.take_at(now, "C", &n, 1).is_ok());
        // 3 cells > burst 2: refused until the bucket is empty (1 s).
        assert_eq!(
            l.take_at(now, "C", &n, 3),
            Err(Refusal::RateLimited(Duration::from_secs(1)))
        );
        let empty = now + Duration::from_secs(1);
        assert!(l.take_at(empty, "C", &n, 3).is_ok());
        // Now 3 s of debt: even one cell waits until it is within the burst.
        assert_eq!(
            l.take_at(empty, "C", &n, 1),
            Err(Refusal::RateLimited(Duration::from_secs(2)))
        );
        assert!(l
            .take_at(empty + Duration::from_secs(2), "C", &n, 1)
            .is_ok());
    }
}

/// The brand's local day for daily caps (`YYYY-MM-DD` in `tz`), and the time
/// left until it ends — caps reset at local midnight, as T-Mobile counts them
/// in Pacific time. DST days are 23 or 25 hours long; this follows the zone.
pub fn local_day(tz: chrono_tz::Tz, now: chrono::DateTime<chrono::Utc>) -> (String, Duration) {
    use chrono::{Days, TimeZone};
    let local = now.with_timezone(&tz);
    let day = local.date_naive();
    let next = day.checked_add_days(Days::new(1)).unwrap_or(day);
    let midnight = next
        .and_hms_opt(0, 0, 0)
        .map(|m| tz.from_local_datetime(&m).earliest());
    let left = match midnight {
        Some(Some(m)) => (m.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::from_secs(1)),
        // A zone whose midnight does not exist that day: try again in an hour.
        _ => Duration::from_secs(3600),
    };
    (
        day.format("%Y-%m-%d").to_string(),
        left.max(Duration::from_secs(1)),
    )
}

#[cfg(test)]
mod day_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn pacific_midnight() {
        let tz = chrono_tz::America::Los_Angeles;
        // 2026-11-26 07:30 UTC = 2026-11-25 23:30 PST.
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 26, 7, 30, 0)
            .unwrap();
        let (day, left) = local_day(tz, now);
        assert_eq!(day, "2026-11-25");
        assert_eq!(left, Duration::from_secs(30 * 60));
        // 08:00 UTC is midnight PST: a new day.
        let (day, left) = local_day(
            tz,
            chrono::Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap(),
        );
        assert_eq!(day, "2026-11-26");
        assert_eq!(left, Duration::from_secs(24 * 3600));
    }
}
