//! Process hardening that `run` applies to itself: no core dumps and no ptrace by other
//! processes of the same user, since its memory holds the site key and request bodies with
//! tokens. Owns nothing else; capabilities and the unit's sandbox are the service's business.

use std::io;

/// Makes the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core file is written, its
/// `/proc/<pid>` files belong to root, and processes of its user cannot ptrace it or read its
/// memory. `execve` sets it back for the new program: hooks the daemon starts are dumpable
/// again (their memory is their own).
pub fn forbid_core_dumps() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; no memory is passed.
    let status = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
