//! Fork detection. A `pthread_atfork` child handler bumps a process-wide generation counter, so
//! code that captured the generation earlier (a `Core`, a thread's ULID generator) can tell that
//! it now runs in a forked child. `pthread_atfork` fires for every `fork()` made through libc,
//! including forks by C extensions that bypass Python's `os.register_at_fork`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn child_after_fork() {
    // Async-signal-safe: one atomic add, no allocation, no locks.
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Registers the child handler once per process (later calls do nothing). Returns false if
/// libc refused (ENOMEM); fork detection then never fires, and the caller may warn.
pub fn register() -> bool {
    let mut ok = true;
    REGISTER.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state; the handler only
        // touches a static atomic.
        ok = unsafe { libc::pthread_atfork(None, None, Some(child_after_fork)) } == 0;
    });
    ok
}

/// How many forks this process is removed from the process that loaded the core (0 in the
/// original process). Relaxed is enough: the counter is written only in the single-threaded
/// child right after fork, before any thread of the child could read it.
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_sees_a_new_generation_and_parent_does_not() {
        assert!(register());
        assert!(register());
        let before = generation();
        // SAFETY: the child only reads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if generation() == before + 1 { 0 } else { 1 };
            // SAFETY: _exit ends the child at once, running no atexit handlers or destructors that
            // could touch state copied from the parent's other threads.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer for the call.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "child did not see the generation bump"
        );
        assert_eq!(generation(), before);
    }
}
