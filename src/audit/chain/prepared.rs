//! A record serialised before its place in the chain is known
//! ([`Prepared`]), and the splice that gives it its `prev_hash`, `seq`
//! and `hash` when it is appended.

use super::*;
/// A record serialised before its place in the chain is known: the
/// canonical JSON of every field but `seq`, `prev_hash` and `hash`, and
/// where each of those belongs in it.
///
/// Records are flat (strings and unsigned integers), so the canonical form
/// is written straight from the sorted field list — the same bytes
/// [`canonical`] gives for the equivalent object, without building one.
/// Appending then only splices in `prev_hash` and `seq`, hashes, and
/// splices in `hash` ([`Prepared::write`]): this runs for every accepted
/// message and every receipt, on the store's single writer thread, so a
/// caller that knows its event before its op prepares it outside
/// ([`super::Audit::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub(super) event: &'static str,
    pub(super) at: String,
    pub(super) bytes: Vec<u8>,
    /// Offsets in `bytes` where `hash`, `prev_hash` and `seq` belong: the
    /// opening quote of the first key that sorts after the name, or the
    /// closing brace. `at_hash <= at_prev <= at_seq`.
    at_hash: usize,
    at_prev: usize,
    at_seq: usize,
}

#[cfg(test)]
impl Prepared {
    /// The record as prepared (without its chain fields), as text.
    pub(crate) fn json_for_tests(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Serialises `entry` as [`Prepared`]. Refuses an event that uses a field
/// the record itself sets, or names one field twice.
pub(crate) fn prepare(entry: &Entry, actor: &str, at: String) -> Result<Prepared, StoreError> {
    let mut fields = entry.fields();
    if let Some((k, _)) = fields.iter().find(|(k, _)| RESERVED.contains(k)) {
        return Err(StoreError::Refused(format!(
            "audit event {} uses the reserved field {k}",
            entry.name()
        )));
    }
    fields.push(("at", FieldValue::Str(at.as_str().into())));
    fields.push(("event", FieldValue::Str(entry.name().into())));
    fields.push(("actor", FieldValue::Str(actor.into())));
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(StoreError::Refused(format!(
            "audit event {} repeats field {}",
            entry.name(),
            w[0].0
        )));
    }
    // Room for the largest usual record (an accepted message with two
    // pseudonyms is ~330 bytes before its hashes), so it never grows.
    let mut bytes = Vec::with_capacity(512);
    bytes.push(b'{');
    let mut offsets = [None::<usize>; 3];
    for (k, v) in &fields {
        if bytes.len() > 1 {
            bytes.push(b',');
        }
        for (slot, name) in offsets.iter_mut().zip(["hash", "prev_hash", "seq"]) {
            if slot.is_none() && name < *k {
                *slot = Some(bytes.len());
            }
        }
        serde_json::to_writer(&mut bytes, k).map_err(json_err)?;
        bytes.push(b':');
        match v {
            FieldValue::Str(s) => serde_json::to_writer(&mut bytes, s.as_ref()),
            FieldValue::U64(n) => serde_json::to_writer(&mut bytes, n),
            FieldValue::Hex(raw) => {
                // Hex digits need no JSON escaping.
                let mut hex = [0u8; 64];
                hex::encode_to_slice(raw, &mut hex)
                    .map_err(|e| StoreError::Refused(format!("audit record hex field: {e}")))?;
                bytes.push(b'"');
                bytes.extend_from_slice(&hex);
                bytes.push(b'"');
                Ok(())
            }
        }
        .map_err(json_err)?;
    }
    let end = bytes.len();
    bytes.push(b'}');
    Ok(Prepared {
        event: entry.name(),
        at,
        bytes,
        at_hash: offsets[0].unwrap_or(end),
        at_prev: offsets[1].unwrap_or(end),
        at_seq: offsets[2].unwrap_or(end),
    })
}

impl Prepared {
    /// An upper bound of the stored record's length: `bytes` and the three
    /// fields [`Prepared::write`] inserts (`hash` 74, `prev_hash` 79, `seq`
    /// at most 27 bytes with their commas).
    pub(super) fn max_len(&self) -> usize {
        self.bytes.len() + 180
    }

    /// Appends the full record at `seq` after `prev_hash` (`prev`: the same
    /// hash as bytes) to `out`, and returns its hash, lower-case hex and as
    /// bytes. On error `out` is unchanged.
    pub(super) fn write(
        &self,
        seq: u64,
        prev_hash: &str,
        prev: &[u8; 32],
        out: &mut Vec<u8>,
    ) -> Result<([u8; 64], [u8; 32]), StoreError> {
        let (b, h, p, s) = (&self.bytes, self.at_hash, self.at_prev, self.at_seq);
        let mut prev_field = Field::new();
        self.field(&mut prev_field, p, "prev_hash", |f| {
            f.quoted(prev_hash.as_bytes())
        });
        let mut seq_field = Field::new();
        self.field(&mut seq_field, s, "seq", |f| {
            f.push(itoa::Buffer::new().format(seq).as_bytes())
        });
        // The hash covers the record without `hash`, streamed in pieces.
        let digest = Sha256::new()
            .chain_update(prev)
            .chain_update(&b[..p])
            .chain_update(prev_field.bytes())
            .chain_update(&b[p..s])
            .chain_update(seq_field.bytes())
            .chain_update(&b[s..])
            .finalize();
        let digest: [u8; 32] = digest.into();
        let mut hex = [0u8; 64];
        hex::encode_to_slice(digest, &mut hex)
            .map_err(|_| StoreError::Refused("audit hash encoding".into()))?;
        let mut hash_field = Field::new();
        self.field(&mut hash_field, h, "hash", |f| f.quoted(&hex));
        // `hash` sorts before `prev_hash`, which sorts before `seq`.
        out.reserve(b.len() + hash_field.len + prev_field.len + seq_field.len);
        out.extend_from_slice(&b[..h]);
        out.extend_from_slice(hash_field.bytes());
        out.extend_from_slice(&b[h..p]);
        out.extend_from_slice(prev_field.bytes());
        out.extend_from_slice(&b[p..s]);
        out.extend_from_slice(seq_field.bytes());
        out.extend_from_slice(&b[s..]);
        Ok((hex, digest))
    }

    /// Writes `"name":value` for insertion at offset `at` of `bytes`:
    /// before a key it is followed by a comma, at the closing brace it
    /// follows one.
    fn field(&self, out: &mut Field, at: usize, name: &str, value: impl FnOnce(&mut Field)) {
        let before_key = self.bytes.get(at) != Some(&b'}');
        if !before_key && at > 1 {
            out.push(b",");
        }
        out.quoted(name.as_bytes());
        out.push(b":");
        value(out);
        if before_key {
            out.push(b",");
        }
    }
}

/// One of the three fields [`Prepared::write`] inserts, built on the stack
/// (`"prev_hash":"<64 hex>",` is the longest: 78 bytes).
pub(super) struct Field {
    buf: [u8; 96],
    len: usize,
}

impl Field {
    fn new() -> Field {
        Field {
            buf: [0; 96],
            len: 0,
        }
    }

    /// Appends `bytes`; what does not fit is dropped (nothing written here
    /// is longer than the buffer).
    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..n]);
        self.len = end;
    }

    /// Appends `"bytes"` (`bytes` need no escaping: names and hex).
    fn quoted(&mut self, bytes: &[u8]) {
        self.push(b"\"");
        self.push(bytes);
        self.push(b"\"");
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
