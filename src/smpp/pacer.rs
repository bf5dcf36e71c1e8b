//! The submit rate of one carrier pool: `max_tps`, and slowing down when the
//! carrier answers `ESME_RTHROTTLED` / `ESME_RMSGQFUL` (issue 16 item 6).
//!
//! Owns: one adaptive rate per pool (AIMD: halve on a throttle episode, grow
//! back step by step while the pool has more to send), the queue of submits
//! waiting for their turn under that rate, and the estimate of what the
//! carrier took when it first throttled an unpaced pool.
//!
//! Must not know: sessions, PDUs, which statuses mean "slow down" (the pool
//! says so through [`Pacer::throttled`]).
//!
//! Invariants: waiters are admitted one at a time in arrival order, spaced
//! by the current rate, so no two throttled submits resume at one instant;
//! one throttle episode (every throttle answer to a submit admitted before
//! the rate last dropped) lowers the rate once; the state lock is never held
//! across an `.await` (the queue's async lock is, on purpose, see
//! [`Pacer::admit`]).
//!
//! Why: the pool used to pause the one session for a doubling time that any
//! success reset, and every waiting submit woke at the same instant. Against
//! a carrier throttling at 200 submit_sm/s that was 91,347 submit_sm for
//! 7,997 messages (peak 5,607/s); carriers suspend accounts for that.

use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

/// Lowest rate the pacer slows to, submit_sm/s: a carrier that throttles even
/// this is refusing service, and the submits then end at the pool's
/// `MAX_THROTTLE_WAIT` instead of crawling on.
const MIN_RATE: f64 = 1.0;

/// Factor applied to the rate on a throttle episode. A half, as in TCP's
/// AIMD: carriers count per second, so a rate that overshot once keeps
/// overshooting unless the cut is deep; the mean stays at ~3/4 of the
/// carrier's limit while it is the bottleneck.
const DECREASE: f64 = 0.5;

/// How often the rate may grow while the pool has more to send than the
/// rate lets through and the carrier has not throttled: about one carrier
/// round trip plus its per-second counter's granularity (a tenth, see the
/// burst below).
const INCREASE_PERIOD: Duration = Duration::from_millis(100);

/// Most [`INCREASE_PERIOD`]s one accepted submit may grow the rate for. A
/// slow rate sees few answers (at 1/s, one per ten periods), yet the pool
/// waited on the rate through every one of those periods without a
/// throttle; counting them keeps a pool cut to a few per second from taking
/// seconds per step (measured: p99 latency 3.1 s at start-up against a
/// 200/s carrier with one step per answer). Capped at a second's worth.
const MAX_STEPS_AT_ONCE: f64 = 10.0;

/// Growth per [`INCREASE_PERIOD`] below the slow-start threshold: doubling,
/// as in TCP slow start. Used after an unpaced pool is first throttled,
/// when the rate to return to is only estimated (and, at start-up, from
/// the carrier's first burst alone), so the real level is found in well
/// under a second instead of the tens of seconds additive steps would take.
const SLOW_START_GROWTH: f64 = 2.0;

/// Growth per [`INCREASE_PERIOD`] above the slow-start threshold, as a
/// fraction of that threshold: the rate regains the level it was cut from
/// (twice the threshold) in 20 steps, ~2 s. Each regain costs about one
/// throttle answer; at 200/s that is one extra submit_sm per ~300 messages.
const ADDITIVE_STEP: f64 = 0.05;

/// With `max_tps = 0` (no configured limit) the pool sends unpaced until a
/// carrier throttles, and returns to unpaced after this long without a
/// throttle answer: re-probing costs one throttle episode, and a carrier's
/// limit rarely changes, so every few minutes is cheap.
const ADAPTIVE_QUIET: Duration = Duration::from_secs(300);

/// Burst allowed at the current rate, as seconds of that rate: a tenth, the
/// same as the carriers' (and the simulator's) counters allow, so a
/// carrier's per-second counter never sees more than its limit plus a
/// tenth at once.
const BURST_SECS: f64 = 0.1;

/// A submit's admission: which rate episode it was sent in.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
}

/// The pool-wide submit pacer (see the module header).
pub struct Pacer {
    /// The queue of waiters: whoever holds it is next and sleeps until its
    /// slot holding it, so those behind cannot overtake and none wake at a
    /// shared instant. tokio's `Mutex` grants the lock in FIFO order.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

struct State {
    /// `max_tps`, if configured.
    ceiling: Option<f64>,
    /// Allowed submit_sm/s; `None` = unpaced (no `max_tps`, never throttled
    /// or quiet for [`ADAPTIVE_QUIET`]).
    rate: Option<f64>,
    /// Below it the rate doubles, above it it grows by steps.
    slow_start_below: f64,
    /// Theoretical arrival time of the next submit (GCRA, like `governor`).
    tat: Instant,
    /// Bumped on each decrease; a throttle answer to a submit admitted
    /// under an older generation belongs to an episode already acted on.
    generation: u64,
    last_decrease: Option<Instant>,
    last_increase: Instant,
    /// A submit had to wait for its slot since the last increase: the rate,
    /// not the demand, is the bottleneck, so growing it is worth testing.
    limited: bool,
    successes: SuccessRate,
}

/// Accepted submits over about the last second (two one-second buckets).
struct SuccessRate {
    bucket_start: Instant,
    current: u64,
    previous: u64,
}

impl SuccessRate {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.bucket_start);
        if elapsed >= Duration::from_secs(2) {
            (self.previous, self.current) = (0, 0);
            self.bucket_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            (self.previous, self.current) = (self.current, 0);
            self.bucket_start += Duration::from_secs(1);
        }
    }

    fn count(&mut self, now: Instant) {
        self.roll(now);
        self.current += 1;
    }

    /// Per second, over the sliding second ending `now`.
    fn per_sec(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let into = now
            .saturating_duration_since(self.bucket_start)
            .as_secs_f64()
            .min(1.0);
        self.previous as f64 * (1.0 - into) + self.current as f64
    }
}

impl State {
    /// The GCRA step: admit now (returns the generation) or say when.
    fn try_take(&mut self, now: Instant) -> Result<u64, Instant> {
        let Some(rate) = self.rate else {
            return Ok(self.generation);
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tat = self.tat.max(now);
        let at = tat.checked_sub(tolerance(rate)).unwrap_or(now);
        if at > now {
            self.limited = true;
            return Err(at);
        }
        self.tat = tat + interval;
        Ok(self.generation)
    }
}

/// How far ahead of its slot a submit may go: the burst minus one interval.
fn tolerance(rate: f64) -> Duration {
    let burst = (rate * BURST_SECS).floor().max(1.0);
    Duration::from_secs_f64((burst - 1.0) / rate)
}

impl Pacer {
    /// A pacer for `max_tps` submit_sm/s; 0 = unpaced until throttled.
    pub fn new(max_tps: u32) -> Pacer {
        let now = Instant::now();
        let ceiling = (max_tps > 0).then_some(f64::from(max_tps));
        Pacer {
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                ceiling,
                rate: ceiling,
                slow_start_below: ceiling.unwrap_or(f64::INFINITY),
                tat: now,
                generation: 0,
                last_decrease: None,
                last_increase: now,
                limited: false,
                successes: SuccessRate {
                    bucket_start: now,
                    current: 0,
                    previous: 0,
                },
            }),
        }
    }

    /// Waits for this submit's turn. `None` when its turn would come after
    /// `deadline` (the caller fails the submit as throttled).
    pub async fn admit(&self, deadline: Instant) -> Option<Ticket> {
        {
            let s = self.state.lock();
            if s.rate.is_none() {
                return Some(Ticket {
                    generation: s.generation,
                });
            }
        }
        // Held across the sleep below on purpose: it is the queue. Only the
        // head of the queue sleeps, until its own slot, and it recomputes
        // that slot on waking, so a rate cut while it slept applies to it.
        let _turn = tokio::time::timeout_at(deadline, self.turn.lock())
            .await
            .ok()?;
        loop {
            let now = Instant::now();
            let at = match self.state.lock().try_take(now) {
                Ok(generation) => return Some(Ticket { generation }),
                Err(at) => at,
            };
            if at > deadline {
                return None;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    /// The carrier accepted a submit: count it, and grow the rate if one
    /// [`INCREASE_PERIOD`] passed with submits waiting on the rate.
    pub fn accepted(&self) {
        if self.state.lock().accepted(Instant::now()) {
            tracing::info!("no throttle answer for {ADAPTIVE_QUIET:?}; pool no longer paced");
        }
    }

    /// The carrier throttled the submit admitted with `ticket`. Lowers the
    /// rate once per episode and returns the new rate, or `None` when this
    /// answer belongs to an episode already acted on.
    pub fn throttled(&self, ticket: Ticket) -> Option<f64> {
        let jitter = rand::thread_rng().gen_range(0.0..1.0);
        let mut s = self.state.lock();
        let entering = s.rate.is_none();
        let rate = s.throttled(ticket.generation, Instant::now(), jitter)?;
        drop(s);
        if entering {
            tracing::info!(
                rate = rate.round(),
                "carrier throttled an unpaced pool; pacing it (submit_sm/s)"
            );
        }
        Some(rate)
    }
}

impl State {
    /// See [`Pacer::accepted`]; true when this left the adaptive mode.
    fn accepted(&mut self, now: Instant) -> bool {
        self.successes.count(now);
        let Some(rate) = self.rate else { return false };
        if self.ceiling.is_none()
            && self
                .last_decrease
                .is_some_and(|t| now.saturating_duration_since(t) >= ADAPTIVE_QUIET)
        {
            self.rate = None;
            return true;
        }
        let since = now.saturating_duration_since(self.last_increase);
        if since < INCREASE_PERIOD {
            return false;
        }
        self.last_increase = now;
        if !std::mem::take(&mut self.limited) {
            return false;
        }
        let steps = (since.as_secs_f64() / INCREASE_PERIOD.as_secs_f64())
            .floor()
            .min(MAX_STEPS_AT_ONCE);
        let grown = if rate < self.slow_start_below {
            (rate * SLOW_START_GROWTH.powf(steps)).min(self.slow_start_below)
        } else {
            rate + (self.slow_start_below * ADDITIVE_STEP).max(MIN_RATE) * steps
        };
        self.rate = Some(self.ceiling.map_or(grown, |c| grown.min(c)));
        false
    }

    /// See [`Pacer::throttled`]; `jitter` in `0..1` spreads the first
    /// submit after the cut over one interval.
    fn throttled(&mut self, generation: u64, now: Instant, jitter: f64) -> Option<f64> {
        if generation != self.generation {
            return None;
        }
        let entering = self.rate.is_none();
        // Unpaced, the rate we were sending at says nothing about the
        // carrier (it was throttling the excess); what it accepted over the
        // last second does.
        let base = match self.rate {
            Some(r) => r,
            None => self.successes.per_sec(now),
        };
        let rate = (base * DECREASE).max(MIN_RATE);
        // From unpaced the estimate may be far too low (at start-up it is
        // the carrier's first burst), so slow start finds the level; after
        // that the threshold is the cut rate and growth is additive.
        self.slow_start_below = if entering { f64::INFINITY } else { rate };
        self.rate = Some(rate);
        self.generation += 1;
        self.last_decrease = Some(now);
        self.last_increase = now;
        self.limited = false;
        // No saved-up burst right after a throttle, and the first submit
        // after it comes a random part of one interval later.
        self.tat = self
            .tat
            .max(now + tolerance(rate) + Duration::from_secs_f64(jitter / rate));
        Some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Takes turns at the state's pace from `t` until `until`, marking each
    /// accepted; returns the time reached and how many were admitted.
    fn run(s: &mut State, mut t: Instant, until: Instant) -> (Instant, u32) {
        let mut n = 0;
        while t < until {
            match s.try_take(t) {
                Ok(_) => {
                    n += 1;
                    s.accepted(t);
                }
                Err(at) => t = at,
            }
        }
        (t, n)
    }

    #[test]
    fn max_tps_spaces_submits_after_a_tenth_second_burst() {
        let p = Pacer::new(100);
        let mut s = p.state.lock();
        let t0 = s.tat;
        // A burst of 10 at once, then one per 10 ms.
        for _ in 0..10 {
            assert!(s.try_take(t0).is_ok());
        }
        let at = s.try_take(t0).unwrap_err();
        assert_eq!(at - t0, 10 * MS);
        let (_, n) = run(&mut s, t0, t0 + Duration::from_secs(1));
        assert!((99..=101).contains(&n), "{n} in the next second");
        assert_eq!(s.rate, Some(100.0), "never above max_tps");
    }

    #[test]
    fn one_episode_cuts_the_rate_once_down_to_a_floor() {
        let p = Pacer::new(100);
        let mut s = p.state.lock();
        let t0 = s.tat;
        let a = s.try_take(t0).unwrap();
        let b = s.try_take(t0).unwrap();
        assert_eq!(s.throttled(a, t0, 0.5), Some(50.0));
        // Sent before the cut: the same episode.
        assert_eq!(s.throttled(b, t0, 0.5), None);
        assert_eq!(s.rate, Some(50.0));
        // No saved-up burst after the cut: the next turn is half an
        // interval (the jitter) away.
        let at = s.try_take(t0).unwrap_err();
        assert_eq!(at - t0, 10 * MS);
        let c = s.try_take(at).unwrap();
        assert_eq!(s.throttled(c, at, 0.0), Some(25.0));
        for _ in 0..20 {
            let g = s.generation;
            s.throttled(g, at, 0.0);
        }
        assert_eq!(s.rate, Some(MIN_RATE));
    }

    #[test]
    fn the_rate_recovers_in_steps_while_there_is_demand_up_to_max_tps() {
        let p = Pacer::new(200);
        let mut s = p.state.lock();
        let t0 = s.tat;
        let g = s.try_take(t0).unwrap();
        assert_eq!(s.throttled(g, t0, 0.0), Some(100.0));
        // Saturated (every turn taken as soon as due): +5/s per 100 ms.
        let mut t = t0;
        let mut seen = vec![];
        while s.rate < Some(200.0) {
            (t, _) = run(&mut s, t, t + 100 * MS);
            seen.push(s.rate.unwrap_or_default().round());
            assert!(t - t0 < Duration::from_secs(10), "{seen:?}");
        }
        assert!(t - t0 >= Duration::from_secs(2), "{:?} {seen:?}", t - t0);
        assert!(seen.windows(2).all(|w| w[1] - w[0] <= 5.0), "{seen:?}");
        (t, _) = run(&mut s, t, t + Duration::from_secs(5));
        assert_eq!(s.rate, Some(200.0), "capped at max_tps");
        // Without demand (one submit per 150 ms: nobody waits) it stays.
        let g = s.generation;
        s.throttled(g, t, 0.0);
        let cut = s.rate;
        for _ in 0..50 {
            t += 150 * MS;
            assert!(s.try_take(t).is_ok());
            s.accepted(t);
        }
        assert_eq!(s.rate, cut);
    }

    #[test]
    fn an_unpaced_pool_is_paced_from_what_the_carrier_took_then_freed() {
        let p = Pacer::new(0);
        let mut s = p.state.lock();
        let t0 = s.tat;
        // The carrier took 300 over 0.9 s, then throttled.
        let mut t = t0;
        let mut g = 0;
        for _ in 0..300 {
            g = s.try_take(t).unwrap();
            s.accepted(t);
            t += 3 * MS;
        }
        assert_eq!(s.rate, None, "unpaced until throttled");
        let rate = s.throttled(g, t, 0.0).unwrap();
        assert!((140.0..=160.0).contains(&rate), "{rate}");
        // Slow start: back above 300/s within half a second of demand.
        let (t1, _) = run(&mut s, t, t + 500 * MS);
        assert!(s.rate > Some(300.0), "{:?}", s.rate);
        // At start-up the carrier's first answers are all the pacer knows:
        // 2 accepted, then a throttle. The floor, 1/s, is left in ~1 s.
        let p2 = Pacer::new(0);
        let mut s2 = p2.state.lock();
        let g = s2.try_take(t0).unwrap();
        s2.accepted(t0);
        s2.accepted(t0);
        assert_eq!(s2.throttled(g, t0, 0.0), Some(MIN_RATE));
        run(&mut s2, t0, t0 + Duration::from_millis(1500));
        assert!(s2.rate > Some(200.0), "{:?}", s2.rate);
        // Quiet for ADAPTIVE_QUIET: unpaced again.
        let t2 = t1 + ADAPTIVE_QUIET;
        assert!(s.try_take(t2).is_ok());
        assert!(s.accepted(t2));
        assert_eq!(s.rate, None);
    }

    #[tokio::test]
    async fn a_turn_beyond_the_deadline_is_refused_at_once() {
        let p = Pacer::new(1);
        let far = Instant::now() + Duration::from_secs(3600);
        p.admit(far).await.unwrap();
        let start = Instant::now();
        let soon = Instant::now() + Duration::from_millis(500);
        assert!(p.admit(soon).await.is_none());
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    // Paused time (the pacer reads tokio's clock): the order and the gaps
    // are the pacer's, not the scheduling delays of a loaded machine, which
    // made this test fail now and then on wall-clock time.
    #[tokio::test(start_paused = true)]
    async fn waiters_are_admitted_in_arrival_order_one_interval_apart() {
        let p = std::sync::Arc::new(Pacer::new(50));
        let far = Instant::now() + Duration::from_secs(3600);
        // Use up the burst of 5.
        for _ in 0..5 {
            p.admit(far).await.unwrap();
        }
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                p.admit(far).await.unwrap();
                order.lock().push((i, Instant::now()));
            }));
            // Each queues before the next arrives.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock();
        let ids: Vec<_> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        for w in order.windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!(gap >= Duration::from_millis(19), "{gap:?}");
        }
    }
}
