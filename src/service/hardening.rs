//! Process hardening for the conduit rules (SPEC §1.3).
//!
//! Owns: the process-wide switches that keep bodies out of core dumps and
//! swap. Must run early in `main`, before any body is in memory and before
//! threads that allocate much are started (so `MCL_CURRENT` covers little and
//! `MCL_FUTURE` covers the rest).
//!
//! Note: `PR_SET_DUMPABLE=0` makes `/proc/self/*` owned by root, but a process
//! may still read its own entries (same thread group), so the Prometheus
//! process collector keeps working.

use std::io;

use super::ServiceError;

/// Refuses core dumps and ptrace attach by other users' processes
/// (`PR_SET_DUMPABLE=0`), sets `RLIMIT_CORE` to 0, and, when `lock_memory`
/// (`[node] lock_memory`), locks all current and future pages in RAM
/// (`mlockall(MCL_CURRENT | MCL_FUTURE)`).
pub fn harden_process(lock_memory: bool) -> Result<(), ServiceError> {
    // SAFETY: prctl with integer arguments only; no pointers involved.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(ServiceError::Harden {
            what: "prctl(PR_SET_DUMPABLE, 0)",
            source: io::Error::last_os_error(),
        });
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        return Err(ServiceError::Harden {
            what: "setrlimit(RLIMIT_CORE, 0)",
            source: io::Error::last_os_error(),
        });
    }
    if lock_memory {
        // SAFETY: flags only.
        let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
        if rc != 0 {
            return Err(ServiceError::LockMemory(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Whether the process is currently dumpable (`PR_GET_DUMPABLE`); the
/// hardening's unit test reads it.
#[cfg(test)]
pub fn is_dumpable() -> Result<bool, ServiceError> {
    // SAFETY: integer-only prctl query.
    let rc = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if rc < 0 {
        return Err(ServiceError::Harden {
            what: "prctl(PR_GET_DUMPABLE)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(rc != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Runs in the test harness process itself: being non-dumpable and having
    // no core limit is harmless there. `lock_memory` is left out on purpose
    // (it would pin the whole harness in RAM).
    #[test]
    fn harden_makes_process_non_dumpable_without_core_limit() {
        harden_process(false).unwrap();
        assert!(!is_dumpable().unwrap());
        let mut lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
    }

    #[test]
    fn lock_memory_error_tells_the_operator_what_to_do() {
        let e = ServiceError::LockMemory(io::Error::from_raw_os_error(libc::ENOMEM));
        let text = e.to_string();
        assert!(text.contains("LimitMEMLOCK=infinity"), "{text}");
        assert!(text.contains("CAP_IPC_LOCK"), "{text}");
    }
}
