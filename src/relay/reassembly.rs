//! Reassembly of concatenated MO messages: the parts a carrier delivered
//! one by one, held (zeroized) until the message is whole and answered.
//!
//! Owns: the table of held parts, its bounds, and the short memory of MOs
//! already delivered. Must not know: SMPP framing, webhooks, keywords; it is
//! handed a part's concatenation header and payload, and answers with an
//! [`Assembly`] that [`super::inbound`] turns into a command status.
//!
//! Rules (issue 16 item 5, issue 20 item 1):
//!
//! - A held message is keyed by (link, sender, recipient, reference,
//!   total). A part announcing another total never joins it (it starts its
//!   own entry).
//! - A part for a slot already filled with the *same* bytes is the carrier
//!   redelivering that part: nothing changes (and when the message is
//!   whole, as after a failed webhook, its delivery is tried again). A part
//!   for a filled slot with *other* bytes (or another data coding) belongs
//!   to another message that reused the reference:
//!   - if the held message is incomplete, it is stale (a carrier that
//!     restarted its references re-sends whole messages): it is discarded,
//!     counted (`mo` outcome `parts_discarded`) and logged without text,
//!     and the part starts a fresh entry;
//!   - if the held message is whole and waiting for the carrier's retry of
//!     its refused part (its webhook failed), it is kept and the new part
//!     is refused with ESME_RX_T_APPN: the carrier retries it, and it is
//!     taken once the held message is delivered or expired. Nothing that
//!     was acknowledged is spliced or dropped for it.
//! - A whole message is delivered by one caller at a time: a part arriving
//!   while its message's webhook is in flight is refused with
//!   ESME_RX_T_APPN (`mo` outcome `busy`); the carrier's retry finds it
//!   delivered or held again.
//! - After a whole message was delivered, its key and a keyed digest of
//!   each part (HMAC-SHA256 under a random per-process key, truncated to
//!   16 octets: never the text, and no dictionary handle on short texts)
//!   are remembered for [`MO_DELIVERED_TTL`] (at most
//!   [`MO_DELIVERED_MAX_PARTS`] parts, oldest forgotten first). A part equal
//!   to the delivered part in its slot is a redelivery (a carrier that
//!   pipelines parts and re-sends them after a reconnect): acknowledged
//!   ESME_ROK, not held, not delivered again (`mo` outcome
//!   `duplicate_part`). A part with other content is a new message and is
//!   assembled normally. Known limit: a *new* message reusing the key whose
//!   part is byte-identical to the delivered message's part in the same
//!   slot, within the memory's lifetime, loses that part (acknowledged as a
//!   duplicate); with 8-bit references the two cannot be told apart.
//! - An empty slot is filled by any part with the same key and data coding:
//!   with 8-bit references a same-total message whose parts land only in
//!   empty slots cannot be told apart from the held one.
//!
//! Bounds (each refusal leaves the part unacknowledged, so nothing
//! acknowledged is lost):
//!
//! - A part's payload (after the UDH) longer than one SMS can carry
//!   ([`MO_PART_MAX_OCTETS`] for 8-bit and UCS-2 data,
//!   [`MO_PART_MAX_SEPTETS`] for GSM 7-bit, which SMPP carries one septet
//!   per octet) is refused with ESME_RINVMSGLEN: no handset produces it,
//!   and a retry will not shrink it.
//! - Held parts are bounded per link ([`MO_HELD_PARTS_PER_LINK`],
//!   [`MO_HELD_BYTES_PER_LINK`]) and in total ([`MO_HELD_PARTS_MAX`],
//!   [`MO_HELD_BYTES_MAX`]); a part beyond a bound is refused with
//!   ESME_RX_T_APPN (temporary: room comes back as messages complete or
//!   expire) and counted (`mo` outcome `parts_full`).
//! - An incomplete message is dropped [`MO_PARTS_TTL`] after its first
//!   part; a whole one whose webhook failed is held [`MO_RETRY_TTL`] after
//!   each failed attempt, but never beyond [`MO_HELD_MAX_AGE`] after its
//!   first part (`mo` outcome `parts_expired`).
//! - The gauge `sms_conduit_mo_parts_held{kind="parts"|"bytes"}` shows
//!   what is held.
//!
//! Invariants: the table's lock is never held across an await; held bytes
//! are `Zeroizing` and dropped on delivery, refusal, discard or expiry; no
//! log line, metric label or error carries a part's bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Mac, SimpleHmac};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::types::masked;

/// Payload octets of one part of 8-bit or UCS-2 data: the 140 octets of an
/// SMS's user data (the UDH is not counted, so this is generous by its
/// length).
pub const MO_PART_MAX_OCTETS: usize = 140;
/// Payload octets of one part of GSM 7-bit data: SMPP carries 7-bit text
/// unpacked, one septet per octet, and 140 octets hold 160 septets.
pub const MO_PART_MAX_SEPTETS: usize = 160;
/// Parts one link may have held at once: a busy carrier completes most
/// concatenated MOs within a second (a few hundred parts in flight at
/// 100 MO/s); this leaves room for a webhook outage's failed wholes while
/// one peer cannot take the whole table.
pub const MO_HELD_PARTS_PER_LINK: usize = 4_096;
/// Payload bytes one link may have held at once (3,276 full-size parts).
pub const MO_HELD_BYTES_PER_LINK: usize = 512 * 1024;
/// Parts held at once over every link.
pub const MO_HELD_PARTS_MAX: usize = 32_768;
/// Payload bytes held at once over every link (was 600 MB from one peer
/// in 10 s before issue 20).
pub const MO_HELD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// An incomplete message's parts are dropped this long after its first
/// part: carriers send the parts of one message within seconds, and retry a
/// refused part within minutes (Kannel's default resend interval is 60 s).
pub const MO_PARTS_TTL: Duration = Duration::from_secs(300);
/// A whole message whose webhook failed is held this long after each failed
/// attempt, for the carrier's retry of the part that got ESME_RX_T_APPN
/// (was 600 s; issue 16 item 5).
pub const MO_RETRY_TTL: Duration = Duration::from_secs(180);
/// No message is held longer than this after its first part, however
/// often its delivery is retried.
pub const MO_HELD_MAX_AGE: Duration = Duration::from_secs(900);
/// How long a delivered message's part digests are remembered, to
/// acknowledge a carrier's redelivery of its parts without relaying it
/// again: a reconnecting carrier re-sends what it had in flight at once.
pub const MO_DELIVERED_TTL: Duration = Duration::from_secs(600);
/// At most this many delivered parts are remembered (16-octet digests:
/// about 2 MB with the keys).
pub const MO_DELIVERED_MAX_PARTS: usize = 65_536;
/// Expired entries are swept at most this often (a sweep walks the table).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Octets of a part's digest kept in the delivered memory.
const DIGEST_LEN: usize = 16;

/// One held message's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub link: String,
    /// The sender's number (an MO's source address).
    pub from: String,
    /// Our number it was sent to.
    pub to: String,
    pub reference: u16,
    pub total: u8,
}

/// What [`Reassembly::add`] made of one part.
pub enum Assembly<'a> {
    /// Every part is here: the data coding and the whole payload. The
    /// message is marked as being delivered until the ticket is closed.
    Whole(Ticket<'a>, u8, Zeroizing<Vec<u8>>),
    /// Held until the other parts come: acknowledge it.
    Held,
    /// A part of a message delivered a moment ago, redelivered by the
    /// carrier: acknowledge it, nothing is relayed.
    Duplicate,
    /// Its message is being delivered right now, or another message with
    /// this key waits for the carrier's retry: a temporary refusal.
    Busy,
    /// Not held: over a bound on held parts; a temporary refusal.
    NoRoom,
    /// The part is longer than one SMS can carry: refused for good.
    TooLong,
}

/// The delivery of a whole message, to be closed with its outcome. Dropped
/// unclosed (the carrier's request was cancelled), it counts as a failed
/// delivery: the parts stay held for the carrier's retry.
pub struct Ticket<'a> {
    table: &'a Reassembly,
    key: Key,
    generation: u64,
    closed: bool,
}

/// How a whole message's delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client has it (ESME_ROK): forget the parts, remember digests.
    Delivered,
    /// The carrier will retry (ESME_RX_T_APPN): keep the parts.
    Retry,
    /// Refused for good: drop the parts.
    Refused,
}

impl Ticket<'_> {
    /// Closes the delivery with its outcome.
    pub fn close(mut self, outcome: Outcome) {
        self.closed = true;
        self.table.close(&self.key, self.generation, outcome);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.closed {
            self.table.close(&self.key, self.generation, Outcome::Retry);
        }
    }
}

/// Parts of one message.
struct Partial {
    generation: u64,
    started: Instant,
    /// When it is dropped unless it completes (or is delivered) first.
    expires: Instant,
    data_coding: u8,
    /// Slot number (1-based) → payload; only the parts that came.
    parts: BTreeMap<u8, Zeroizing<Vec<u8>>>,
    bytes: usize,
    /// Its webhook call is in flight.
    delivering: bool,
}

impl Partial {
    fn whole(&self, total: u8) -> bool {
        self.parts.len() == usize::from(total)
    }
}

/// Parts and bytes held.
#[derive(Clone, Copy, Default)]
struct Usage {
    parts: usize,
    bytes: usize,
}

/// A delivered message's part digests.
struct Delivered {
    generation: u64,
    at: Instant,
    digests: Vec<[u8; DIGEST_LEN]>,
}

#[derive(Default)]
struct Table {
    partials: HashMap<Key, Partial>,
    per_link: HashMap<String, Usage>,
    total: Usage,
    delivered: HashMap<Key, Delivered>,
    /// Delivered keys, oldest first, with their generation (a key
    /// remembered again has a newer one).
    delivered_order: VecDeque<(Key, u64)>,
    delivered_parts: usize,
    next_generation: u64,
    last_sweep: Option<Instant>,
}

/// The held parts of every link's concatenated MOs.
pub struct Reassembly {
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
    /// Key of the part digests; random per process, never stored.
    digest_key: Zeroizing<[u8; 32]>,
}

/// Whether `data_coding` names a GSM 7-bit alphabet (SMPP 3.4 §5.2.19 and
/// the GSM 03.38 coding groups; IA5 is sent as GSM 7-bit on the air).
fn seven_bit(data_coding: u8) -> bool {
    matches!(
        data_coding,
        0x00 | 0x01 | 0x10..=0x13 | 0xC0..=0xDF | 0xF0..=0xF3
    )
}

/// The longest payload one part of `data_coding` may carry.
pub fn max_part_len(data_coding: u8) -> usize {
    if seven_bit(data_coding) {
        MO_PART_MAX_SEPTETS
    } else {
        MO_PART_MAX_OCTETS
    }
}

impl Reassembly {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let table = Reassembly {
            table: Mutex::new(Table::default()),
            metrics,
            digest_key: Zeroizing::new(rand::random()),
        };
        table.publish(&Usage::default());
        table
    }

    fn digest(&self, data_coding: u8, payload: &[u8]) -> [u8; DIGEST_LEN] {
        let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(&self.digest_key[..])
            .expect("HMAC takes a key of any length");
        mac.update(&[data_coding]);
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut d = [0; DIGEST_LEN];
        d.copy_from_slice(&full[..DIGEST_LEN]);
        d
    }

    fn count(&self, link: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.metrics
                .messages
                .with_label_values(&["mo", outcome, link])
                .inc_by(n);
        }
    }

    fn publish(&self, total: &Usage) {
        let g = &self.metrics.mo_parts_held;
        g.with_label_values(&["parts"]).set(total.parts as i64);
        g.with_label_values(&["bytes"]).set(total.bytes as i64);
    }

    /// Adds part `seq` (1-based) of the message `key`.
    pub fn add(&self, key: Key, seq: u8, data_coding: u8, payload: &[u8]) -> Assembly<'_> {
        self.add_at(Instant::now(), key, seq, data_coding, payload)
    }

    fn add_at(
        &self,
        now: Instant,
        key: Key,
        seq: u8,
        data_coding: u8,
        payload: &[u8],
    ) -> Assembly<'_> {
        if payload.len() > max_part_len(data_coding) {
            return Assembly::TooLong;
        }
        if seq == 0 || seq > key.total {
            // split_udh never yields one; a refusal rather than a panic.
            return Assembly::TooLong;
        }
        let digest = self.digest(data_coding, payload);
        let mut t = self.table.lock();
        self.sweep(&mut t, now);
        // A redelivered part of a message delivered a moment ago.
        if let Some(d) = t.delivered.get(&key) {
            if now.duration_since(d.at) < MO_DELIVERED_TTL
                && d.digests.get(usize::from(seq) - 1) == Some(&digest)
            {
                return Assembly::Duplicate;
            }
        }
        if let Some(p) = t.partials.get(&key) {
            let expired = now >= p.expires && !p.delivering;
            let same = p.data_coding == data_coding
                && p.parts.get(&seq).is_none_or(|held| held[..] == *payload);
            match (expired, p.delivering, same) {
                (true, _, _) => {
                    let dropped = self.remove(&mut t, &key);
                    self.count(&key.link, "parts_expired", u64::from(dropped.is_some()));
                }
                (false, true, _) => return Assembly::Busy,
                (false, false, true) => {}
                // A whole waiting for the carrier's retry is kept.
                (false, false, false) if p.whole(key.total) => return Assembly::Busy,
                (false, false, false) => {
                    if let Some(p) = self.remove(&mut t, &key) {
                        tracing::warn!(
                            link = %key.link,
                            from = %masked(&key.from),
                            reference = key.reference,
                            total = key.total,
                            held = p.parts.len(),
                            "held parts of an incomplete MO discarded: a part with other content reused their reference"
                        );
                        self.count(&key.link, "parts_discarded", 1);
                    }
                }
            }
        }
        let filled = t
            .partials
            .get(&key)
            .is_some_and(|p| p.parts.contains_key(&seq));
        if !filled && !self.room(&t, &key.link, payload.len()) {
            return Assembly::NoRoom;
        }
        let generation = t.next_generation;
        let p = t.partials.entry(key.clone()).or_insert_with(|| Partial {
            generation,
            started: now,
            expires: now + MO_PARTS_TTL,
            data_coding,
            parts: BTreeMap::new(),
            bytes: 0,
            delivering: false,
        });
        let mut added = Usage::default();
        if !filled {
            p.parts.insert(seq, Zeroizing::new(payload.to_vec()));
            p.bytes += payload.len();
            added = Usage {
                parts: 1,
                bytes: payload.len(),
            };
        }
        let whole = p.whole(key.total).then(|| {
            p.delivering = true;
            let mut w = Zeroizing::new(Vec::with_capacity(p.bytes));
            for part in p.parts.values() {
                w.extend_from_slice(part);
            }
            (p.generation, p.data_coding, w)
        });
        if p.generation == generation {
            t.next_generation += 1;
        }
        if added.parts > 0 {
            let link = t.per_link.entry(key.link.clone()).or_default();
            link.parts += added.parts;
            link.bytes += added.bytes;
            t.total.parts += added.parts;
            t.total.bytes += added.bytes;
            self.publish(&t.total);
        }
        drop(t);
        match whole {
            Some((generation, dc, w)) => Assembly::Whole(
                Ticket {
                    table: self,
                    key,
                    generation,
                    closed: false,
                },
                dc,
                w,
            ),
            None => Assembly::Held,
        }
    }

    /// Whether one more part of `len` bytes fits on `link` and in total.
    fn room(&self, t: &Table, link: &str, len: usize) -> bool {
        let l = t.per_link.get(link).copied().unwrap_or_default();
        l.parts < MO_HELD_PARTS_PER_LINK
            && l.bytes + len <= MO_HELD_BYTES_PER_LINK
            && t.total.parts < MO_HELD_PARTS_MAX
            && t.total.bytes + len <= MO_HELD_BYTES_MAX
    }

    /// Takes a message out of the table and its usage off the counts.
    fn remove(&self, t: &mut Table, key: &Key) -> Option<Partial> {
        let p = t.partials.remove(key)?;
        let n = p.parts.len();
        if let Some(l) = t.per_link.get_mut(&key.link) {
            l.parts = l.parts.saturating_sub(n);
            l.bytes = l.bytes.saturating_sub(p.bytes);
            if l.parts == 0 {
                t.per_link.remove(&key.link);
            }
        }
        t.total.parts = t.total.parts.saturating_sub(n);
        t.total.bytes = t.total.bytes.saturating_sub(p.bytes);
        self.publish(&t.total);
        Some(p)
    }

    /// Drops expired messages and delivered memory, at most once per
    /// [`SWEEP_EVERY`].
    fn sweep(&self, t: &mut Table, now: Instant) {
        if t.last_sweep
            .is_some_and(|s| now.duration_since(s) < SWEEP_EVERY)
        {
            return;
        }
        t.last_sweep = Some(now);
        let expired: Vec<Key> = t
            .partials
            .iter()
            .filter(|(_, p)| !p.delivering && now >= p.expires)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if self.remove(t, &key).is_some() {
                self.count(&key.link, "parts_expired", 1);
            }
        }
        while let Some((key, generation)) = t.delivered_order.front() {
            let stale = match t.delivered.get(key) {
                Some(d) if d.generation == *generation => {
                    now.duration_since(d.at) >= MO_DELIVERED_TTL
                }
                // Remembered again since: this queue entry is dead.
                _ => true,
            };
            if !stale {
                break;
            }
            self.forget_oldest(t);
        }
    }

    /// Pops the oldest delivered-memory entry.
    fn forget_oldest(&self, t: &mut Table) {
        let Some((key, generation)) = t.delivered_order.pop_front() else {
            return;
        };
        if t.delivered
            .get(&key)
            .is_some_and(|d| d.generation == generation)
        {
            if let Some(d) = t.delivered.remove(&key) {
                t.delivered_parts = t.delivered_parts.saturating_sub(d.digests.len());
            }
        }
    }

    fn close(&self, key: &Key, generation: u64, outcome: Outcome) {
        let now = Instant::now();
        let mut t = self.table.lock();
        let ours = t
            .partials
            .get(key)
            .is_some_and(|p| p.generation == generation);
        if !ours {
            return;
        }
        match outcome {
            Outcome::Retry => {
                if let Some(p) = t.partials.get_mut(key) {
                    p.delivering = false;
                    p.expires = (now + MO_RETRY_TTL).min(p.started + MO_HELD_MAX_AGE);
                }
            }
            Outcome::Refused => {
                self.remove(&mut t, key);
            }
            Outcome::Delivered => {
                let Some(p) = self.remove(&mut t, key) else {
                    return;
                };
                let digests: Vec<_> = p
                    .parts
                    .values()
                    .map(|part| self.digest(p.data_coding, part))
                    .collect();
                let n = digests.len();
                if let Some(old) = t.delivered.insert(
                    key.clone(),
                    Delivered {
                        generation,
                        at: now,
                        digests,
                    },
                ) {
                    t.delivered_parts = t.delivered_parts.saturating_sub(old.digests.len());
                }
                t.delivered_parts += n;
                t.delivered_order.push_back((key.clone(), generation));
                while t.delivered_parts > MO_DELIVERED_MAX_PARTS {
                    self.forget_oldest(&mut t);
                }
            }
        }
    }

    /// Parts and bytes held now (for tests and the gauge).
    pub fn held(&self) -> (usize, usize) {
        let t = self.table.lock();
        (t.total.parts, t.total.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reference: u16, total: u8) -> Key {
        Key {
            link: "carrier-a".into(),
            from: "15557654321".into(),
            to: "15551230001".into(),
            reference,
            total,
        }
    }

    fn whole(a: Assembly<'_>) -> Vec<u8> {
        match a {
            Assembly::Whole(ticket, _, w) => {
                ticket.close(Outcome::Delivered);
                w.to_vec()
            }
            _ => panic!("not whole"),
        }
    }

    #[test]
    fn expired_parts_are_dropped_and_the_gauge_follows() {
        let r = Reassembly::new(Arc::new(Metrics::new()));
        let t0 = Instant::now();
        assert!(matches!(
            r.add_at(t0, key(1, 2), 1, 0, b"abc"),
            Assembly::Held
        ));
        assert_eq!(r.held(), (1, 3));
        // Past the TTL the held part is gone: part 2 alone does not complete.
        let later = t0 + MO_PARTS_TTL + Duration::from_secs(1);
        assert!(matches!(
            r.add_at(later, key(1, 2), 2, 0, b"de"),
            Assembly::Held
        ));
        assert_eq!(r.held(), (1, 2));
    }

    #[test]
    fn a_failed_whole_expires_after_the_retry_ttl() {
        let r = Reassembly::new(Arc::new(Metrics::new()));
        let t0 = Instant::now();
        assert!(matches!(
            r.add_at(t0, key(2, 2), 1, 0, b"ab"),
            Assembly::Held
        ));
        match r.add_at(t0, key(2, 2), 2, 0, b"cd") {
            Assembly::Whole(ticket, _, _) => ticket.close(Outcome::Retry),
            _ => panic!("not whole"),
        }
        assert_eq!(r.held(), (2, 4));
        // The retry of part 2 within the TTL completes it again.
        match r.add(key(2, 2), 2, 0, b"cd") {
            Assembly::Whole(ticket, _, w) => {
                assert_eq!(&w[..], b"abcd");
                ticket.close(Outcome::Retry);
            }
            _ => panic!("not whole"),
        }
        // After the retry TTL the parts are gone: a retry holds only itself.
        let late = Instant::now() + MO_RETRY_TTL + Duration::from_secs(10);
        assert!(matches!(
            r.add_at(late, key(2, 2), 2, 0, b"cd"),
            Assembly::Held
        ));
        assert_eq!(r.held(), (1, 2));
    }

    #[test]
    fn a_dropped_ticket_keeps_the_parts_for_the_retry() {
        let r = Reassembly::new(Arc::new(Metrics::new()));
        assert!(matches!(r.add(key(3, 2), 1, 0, b"ab"), Assembly::Held));
        let a = r.add(key(3, 2), 2, 0, b"cd");
        assert!(matches!(r.add(key(3, 2), 2, 0, b"cd"), Assembly::Busy));
        drop(a);
        assert_eq!(whole(r.add(key(3, 2), 2, 0, b"cd")), b"abcd");
    }

    #[test]
    fn delivered_memory_is_bounded() {
        let r = Reassembly::new(Arc::new(Metrics::new()));
        let n = MO_DELIVERED_MAX_PARTS / 2 + 1;
        for i in 0..n {
            let k = Key {
                from: format!("1555{i:07}"),
                ..key(4, 2)
            };
            assert!(matches!(r.add(k.clone(), 1, 0, b"x"), Assembly::Held));
            let _ = whole(r.add(k, 2, 0, b"y"));
        }
        let t = r.table.lock();
        assert!(t.delivered_parts <= MO_DELIVERED_MAX_PARTS);
        // The first one was forgotten, the last one is remembered.
        assert!(!t.delivered.contains_key(&Key {
            from: format!("1555{:07}", 0),
            ..key(4, 2)
        }));
        assert!(t.delivered.contains_key(&Key {
            from: format!("1555{:07}", n - 1),
            ..key(4, 2)
        }));
    }
}
