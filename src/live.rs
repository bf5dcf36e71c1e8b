//! The live configuration as one snapshot, swapped in one step.
//!
//! Owns: the cell that holds the appliance's live configuration
//! ([`Snapshot`]) and the view of one part of it that a component reads
//! ([`Part`]). The app (`app/live.rs`) builds the whole configuration a
//! reload brings — every step that can fail first — and stores it with one
//! [`Snapshot::store`]; every component reads its part through a [`Part`]
//! of that one cell, so no component can see a configuration the others do
//! not see yet. A read is one atomic load of the cell and one reference
//! count increment; no lock, nothing held across an await, no allocation.
//!
//! A leaf: generic over what the snapshot holds, so the relay, the API, the
//! webhook dispatcher and the SMPP server name only their own part, never
//! each other's types (the module dependencies of `ARCHITECTURE.md`).
//! A component built on its own (a test, a tool) holds its part in a cell
//! of its own ([`Part::own`]) and may [`Part::set`] it.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One cell holding a whole configuration; cheap to clone (shared).
pub struct Snapshot<L>(Arc<ArcSwap<L>>);

impl<L> Clone for Snapshot<L> {
    fn clone(&self) -> Self {
        Snapshot(self.0.clone())
    }
}

impl<L: Send + Sync + 'static> Snapshot<L> {
    pub fn new(first: L) -> Self {
        Snapshot(Arc::new(ArcSwap::from_pointee(first)))
    }

    /// The current configuration.
    pub fn load_full(&self) -> Arc<L> {
        self.0.load_full()
    }

    /// Replaces the whole configuration in one step: a reader sees the old
    /// one or the new one, never a mix.
    pub fn store(&self, next: L) {
        self.0.store(Arc::new(next));
    }

    /// The part `get` picks out of every configuration this cell will hold.
    pub fn part<T: Send + Sync + 'static>(&self, get: fn(&L) -> &Arc<T>) -> Part<T> {
        let cell = self.0.clone();
        Part(Source::Of(Arc::new(move || get(&cell.load()).clone())))
    }
}

/// A component's part of the live configuration.
pub struct Part<T>(Source<T>);

type Getter<T> = Arc<dyn Fn() -> Arc<T> + Send + Sync>;

enum Source<T> {
    /// Read from an app's [`Snapshot`].
    Of(Getter<T>),
    /// A cell of its own (a component built outside an app).
    Own(ArcSwap<T>),
}

impl<T> fmt::Debug for Part<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Source::Of(_) => "Part(snapshot)",
            Source::Own(_) => "Part(own)",
        })
    }
}

impl<T: Send + Sync + 'static> Part<T> {
    /// A part in a cell of its own.
    pub fn own(first: Arc<T>) -> Self {
        Part(Source::Own(ArcSwap::new(first)))
    }

    /// The current value. Read it once per request and use that value
    /// throughout.
    pub fn load(&self) -> Arc<T> {
        match &self.0 {
            Source::Of(get) => get(),
            Source::Own(cell) => cell.load_full(),
        }
    }

    /// Replaces a part held in a cell of its own. A part of an app's
    /// snapshot changes only with the whole snapshot: then this does
    /// nothing and returns `false`.
    pub fn set(&self, next: Arc<T>) -> bool {
        match &self.0 {
            Source::Of(_) => false,
            Source::Own(cell) => {
                cell.store(next);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Whole {
        a: Arc<u32>,
        b: Arc<String>,
    }

    #[test]
    fn parts_change_together_with_the_snapshot() {
        let s = Snapshot::new(Whole {
            a: Arc::new(1),
            b: Arc::new("one".into()),
        });
        let (a, b) = (s.part(|w| &w.a), s.part(|w| &w.b));
        assert_eq!((*a.load(), b.load().as_str()), (1, "one"));
        assert!(!a.set(Arc::new(5)), "a snapshot's part is not set alone");
        s.store(Whole {
            a: Arc::new(2),
            b: Arc::new("two".into()),
        });
        assert_eq!((*a.load(), b.load().as_str()), (2, "two"));
    }

    #[test]
    fn an_own_part_is_set_alone() {
        let p = Part::own(Arc::new(1u32));
        assert!(p.set(Arc::new(3)));
        assert_eq!(*p.load(), 3);
    }
}
