//! Fault injection for the store: a redb storage backend whose writes can
//! be made to fail as on a full disk, for tests of detection and recovery.
//!
//! Owns: [`FaultSwitch`] and the backend it drives ([`FaultBackend`]), a thin
//! wrapper over redb's own [`FileBackend`].
//!
//! Must not know: tables, ops, the writer. It sees only page offsets and
//! byte counts, never what the pages hold.
//!
//! Invariants:
//! - inert unless a test opens the store with
//!   [`super::Store::open_with_faults`]: [`super::Store::open`] uses the plain
//!   [`FileBackend`], so the normal path pays nothing for this module;
//! - while the switch is on, every `write`, `set_len` and `sync_data` fails
//!   with [`std::io::ErrorKind::StorageFull`] (what ENOSPC maps to) and
//!   changes nothing; reads and `len` always pass through, as on a full disk.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::StorageBackend;

/// Turns the injected write failures on and off. Cheap to clone; every clone
/// drives the same backend(s).
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    fail: Arc<AtomicBool>,
}

impl FaultSwitch {
    /// A switch that is off: writes go through.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `on`, every write and sync of the store's file fails with
    /// `StorageFull`.
    pub fn fail_writes(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    /// Whether writes fail now.
    pub fn failing(&self) -> bool {
        self.fail.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        if self.failing() {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected fault: no space left on device",
            ))
        } else {
            Ok(())
        }
    }
}

/// [`FileBackend`] whose writes fail while its [`FaultSwitch`] is on.
#[derive(Debug)]
pub(crate) struct FaultBackend {
    inner: FileBackend,
    switch: FaultSwitch,
}

impl FaultBackend {
    pub(crate) fn new(inner: FileBackend, switch: FaultSwitch) -> Self {
        FaultBackend { inner, switch }
    }
}

impl StorageBackend for FaultBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.switch.check()?;
        self.inner.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.switch.check()?;
        self.inner.write(offset, data)
    }
}
