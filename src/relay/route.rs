//! Routing: which carrier takes a destination.
//!
//! Rule: among carriers whose `prefixes` match the destination (an empty list
//! matches everything) and that have at least one bound session, the longest
//! matching prefix wins, then the lowest `priority`. A carrier with no bound
//! session is skipped, which is the failover to the next priority. No match →
//! `no_route`.

use crate::config::Carrier;
use crate::types::E164;

/// A carrier's routing entry (at the carrier's index in config order).
#[derive(Debug, Clone)]
pub struct Route {
    pub prefixes: Vec<String>,
    pub priority: u32,
}

impl From<&Carrier> for Route {
    fn from(c: &Carrier) -> Self {
        Route {
            prefixes: c.prefixes.clone(),
            priority: c.priority,
        }
    }
}

/// The routing table, in config order.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(carriers: &[Carrier]) -> Self {
        Routes(carriers.iter().map(Route::from).collect())
    }

    /// Carrier indices that can take `to`, best first. `bound(i)` tells
    /// whether carrier `i` has a bound session now.
    pub fn candidates(&self, to: &E164, bound: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut c: Vec<(usize, usize, u32)> = self
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let len = if r.prefixes.is_empty() {
                    Some(0)
                } else {
                    r.prefixes
                        .iter()
                        .filter(|p| to.as_str().starts_with(p.as_str()))
                        .map(|p| p.len())
                        .max()
                }?;
                Some((i, len, r.priority))
            })
            .filter(|(i, _, _)| bound(*i))
            .collect();
        c.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        c.into_iter().map(|(i, _, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        // The name only labels the entry here: routes are found by index.
        let r = |_carrier: &str, p: &[&str], prio| Route {
            prefixes: p.iter().map(|s| s.to_string()).collect(),
            priority: prio,
        };
        Routes(vec![
            r("a", &["+1"], 1),
            r("b", &["+1"], 2),
            r("uk", &["+44"], 1),
            r("local", &["+1555"], 3),
        ])
    }

    #[test]
    fn longest_prefix_then_priority_then_failover() {
        let r = routes();
        let us = E164::parse("+12125550100").unwrap();
        assert_eq!(r.candidates(&us, |_| true), vec![0, 1]);
        assert_eq!(
            r.candidates(&us, |i| i != 0),
            vec![1],
            "failover when a is down"
        );
        let local = E164::parse("+15551230000").unwrap();
        assert_eq!(r.candidates(&local, |_| true), vec![3, 0, 1]);
        let fr = E164::parse("+33612345678").unwrap();
        assert!(r.candidates(&fr, |_| true).is_empty());
    }
}
