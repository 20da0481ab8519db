//! Ctrl-C during training: the first press asks the training loop to stop after the current
//! step, save a checkpoint and exit, so no finished step is lost; a second press ends the
//! process at once (the last periodic checkpoint is still complete on disk).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Starts listening for SIGINT (Ctrl-C) and SIGTERM.
pub fn install() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and, on a second signal, calls _exit, both
    // async-signal-safe; `handler` has the C ABI that signal(2) expects.
    unsafe {
        let h = handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

#[cfg(unix)]
extern "C" fn handler(_: libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe. 130 = 128 + SIGINT, the shell's convention.
        unsafe { libc::_exit(130) };
    }
}

/// Whether the user asked to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
