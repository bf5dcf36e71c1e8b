//! "did you mean …?" for unknown keys: the known keys of the table an
//! unknown key sits in, read from the serde derive of its `raw` struct (so
//! the list can never drift from what the parser accepts), and the closest
//! one by edit distance.

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::raw::*;

/// A deserializer that only records the field names a derived `Deserialize`
/// passes to `deserialize_struct`, then stops.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field names only"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The keys `T` (a derived struct) accepts.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The known keys of the table at `parent` (a key path, indices included:
/// `campaigns[0]`), or `None` for a table this module does not know.
fn known_keys(parent: &str) -> Option<&'static [&'static str]> {
    // `campaigns[0]` → `campaigns`; `clients[0].key_sha256[1]` →
    // `clients.key_sha256` (not a table here).
    let mut table = String::with_capacity(parent.len());
    let mut in_index = false;
    for ch in parent.chars() {
        match ch {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => table.push(c),
            _ => {}
        }
    }
    Some(match table.as_str() {
        "" => fields_of::<RawConfig>(),
        "node" => fields_of::<RawNode>(),
        "tls" => fields_of::<RawTls>(),
        "api" => fields_of::<RawApi>(),
        "metrics" => fields_of::<RawMetrics>(),
        "smpp_server" => fields_of::<RawSmppServer>(),
        "carriers" => fields_of::<RawCarrier>(),
        "peers" => fields_of::<RawPeer>(),
        "brands" => fields_of::<RawBrand>(),
        "campaigns" => fields_of::<RawCampaign>(),
        "clients" => fields_of::<RawClient>(),
        "audit" => fields_of::<RawAudit>(),
        "store" => fields_of::<RawStore>(),
        "fleet" => fields_of::<RawFleet>(),
        _ => return None,
    })
}

/// Edit distance over chars, a swap of two neighbours counting as one edit
/// (optimal string alignment: `burts` is one edit from `burst`).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, cell) in d.iter_mut().step_by(w).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The problem text for the unknown key at `path` (`node.drain_sec`):
/// "unknown key", with the closest known key of its table when one is
/// close enough to be a typo (at most a third of its length, at least 1,
/// edits away; `burts` → `burst`, `lsiten` → `listen`).
pub(super) fn unknown_key(path: &str) -> String {
    let (parent, key) = match path.rfind('.') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    let best = known_keys(parent).and_then(|keys| {
        keys.iter()
            .map(|k| (distance(key, k), *k))
            .filter(|(d, k)| *d <= (k.chars().count() / 3).max(1))
            .min_by_key(|(d, _)| *d)
    });
    match best {
        Some((_, k)) => format!("unknown key; did you mean `{k}`?"),
        None => "unknown key".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_come_from_the_raw_structs() {
        assert!(known_keys("node")
            .unwrap_or_default()
            .contains(&"drain_secs"));
        assert!(known_keys("campaigns[3]")
            .unwrap_or_default()
            .contains(&"segments_per_minute"));
        assert!(known_keys("").unwrap_or_default().contains(&"smpp_server"));
        assert!(known_keys("clients[0].key_sha256[1]").is_none());
    }

    #[test]
    fn typos_get_the_closest_key_and_strangers_none() {
        assert_eq!(
            unknown_key("node.drain_sec"),
            "unknown key; did you mean `drain_secs`?"
        );
        assert_eq!(
            unknown_key("api.lsiten"),
            "unknown key; did you mean `listen`?"
        );
        assert_eq!(
            unknown_key("campaigns[0].burts"),
            "unknown key; did you mean `burst`?"
        );
        assert_eq!(
            unknown_key("smpp_servr"),
            "unknown key; did you mean `smpp_server`?"
        );
        assert_eq!(unknown_key("node.colour"), "unknown key");
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("burts", "burst"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
