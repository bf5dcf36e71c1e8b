//! A global allocator that wipes every block before it gives it back.
//!
//! SPEC §1.1: a body exists only while it is relayed. The relay's own body
//! buffers are `Zeroizing`, but copies also pass through buffers it does
//! not own: hyper's request and response buffers, rustls's record buffers,
//! serde's scratch space, the webhook client's bodies, vectors that grew and
//! left their old storage behind. Freed, those bytes stay in the
//! allocator's pages until reused: a memory dump of a running relay found
//! 97 copies of 32 canary texts a few seconds after they were relayed
//! (tests/memory_canary.rs). Wiping at the one place every block passes
//! through on its way out covers all of them, whoever allocated them.
//!
//! Owns: [`ZeroOnFree`], a [`GlobalAlloc`] over another allocator.
//!
//! Must not know: what the blocks hold.
//!
//! Invariants: every byte of a block is overwritten with zeros by
//! `explicit_bzero` (which the compiler may not elide as a dead store
//! before a free) before the inner allocator gets it back, on `dealloc`
//! and on a `realloc` that moves the block; a `realloc` never hands the
//! inner allocator a block to move, so no copy is left behind unwiped.
//! The one exception is a thread that declared it never holds a body
//! ([`no_bodies_on_this_thread`]): the store's writer, whose ops carry
//! metadata only (SPEC §1: a body is never stored) and which frees a
//! commit's worth of page buffers per batch — wiping them was ~3% of the
//! relay's CPU at a steady 1,000 msg/s (BENCHMARKS.md, issue 21). A body
//! freed on such a thread anyway would be left unwiped, and
//! tests/memory_canary.rs would find it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// See the module docs.
pub struct ZeroOnFree<A>(pub A);

thread_local! {
    /// Set on threads that never hold a message body.
    static NO_BODIES: Cell<bool> = const { Cell::new(false) };
}

/// Declares that the current thread never holds a message body, so the
/// blocks it frees need no wipe. For the store's writer thread only.
pub fn no_bodies_on_this_thread() {
    NO_BODIES.with(|b| b.set(true));
}

fn wipe(ptr: *mut u8, len: usize) {
    // A thread being torn down (its thread-locals gone) wipes.
    if len > 0 && !NO_BODIES.try_with(Cell::get).unwrap_or(false) {
        // SAFETY: `ptr` is a live block of at least `len` bytes owned by the
        // caller (the allocator, just before freeing it).
        unsafe { libc::explicit_bzero(ptr.cast(), len) }
    }
}

// SAFETY: every method forwards to the inner allocator with the same
// layout contract; the only additions are writes of zeros into a block the
// caller is giving up, and a copy between two live blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroOnFree<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        // SAFETY: the caller's block and layout, as `GlobalAlloc` requires.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` with the old alignment is the layout the caller
        // asks for (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block from the inner allocator.
        let new = unsafe { self.0.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the copy is no
            // longer than either.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            wipe(ptr, layout.size());
            // SAFETY: the caller's old block and layout.
            unsafe { self.0.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_work_through_alloc_realloc_and_dealloc() {
        let a = ZeroOnFree(std::alloc::System);
        let layout = Layout::from_size_align(16, 8).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xAB, 16);
            let q = a.realloc(p, layout, 64);
            assert!(!q.is_null());
            assert_eq!(std::slice::from_raw_parts(q, 16), &[0xAB; 16]);
            a.dealloc(q, Layout::from_size_align(64, 8).unwrap());
        }
    }
}
