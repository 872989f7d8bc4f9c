//! Thread helpers for reactors.

/// Pins the calling thread to CPU `core` (an index as the OS numbers CPUs). Returns false if
/// the core does not exist or the OS refused.
pub fn pin_current_thread(core: usize) -> bool {
    // core_affinity panics on ids beyond the CPU set size; only pass ids the OS lists.
    let known = core_affinity::get_core_ids().unwrap_or_default();
    if !known.iter().any(|c| c.id == core) {
        return false;
    }
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Sets the calling thread's name as shown by `ps`/`top` (truncated to 15 bytes; interior
/// NULs are rejected). Returns whether it worked.
pub fn set_thread_name(name: &str) -> bool {
    let mut bytes: Vec<u8> = name.bytes().take(15).collect();
    if bytes.contains(&0) {
        return false;
    }
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated buffer of at most 16 bytes, which is what
    // PR_SET_NAME reads; it outlives the call.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
    r == 0
}

/// Restores the default SIGPIPE action (terminate quietly), as command-line tools expect:
/// Rust starts with SIGPIPE ignored, so `tandem ... | head` made `println!` panic on EPIPE.
/// Call it first thing in a CLI's `main`, never in a daemon.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; no handler code runs, and the call
    // happens before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_and_name() {
        let ok = std::thread::spawn(|| {
            let pinned = pin_current_thread(0);
            let named = set_thread_name("tandem-test-thread-long-name");
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            (pinned, named, comm)
        })
        .join()
        .unwrap();
        assert!(ok.0);
        assert!(ok.1);
        assert_eq!(ok.2.trim_end(), "tandem-test-thr");
        assert!(!pin_current_thread(1 << 20));
        assert!(!set_thread_name("a\0b"));
    }
}
