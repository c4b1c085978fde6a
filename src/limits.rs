//! The descriptor budget. Every proxied connection holds descriptors (two
//! sockets, and a splice pipe while bytes move), every UDP flow one, so the
//! process's RLIMIT_NOFILE is what bounds them. sluice raises its soft limit
//! to the hard one at start, as HAProxy does, and derives each listener's
//! default caps from it, so that no listener can take every descriptor: a
//! loop sluice cannot see (two instances pointing at each other) fills one
//! listener, while the others, the admin endpoint and DNS keep room.

use std::io;

/// Descriptors kept for what is not a proxied connection: the admin
/// endpoint, DNS lookups, health checks, logs, the runtime itself.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// Default `max_connections` where descriptors are plentiful.
const MAX_DEFAULT_CONNECTIONS: u64 = 10_000;
/// Default `max_flows` where descriptors are plentiful.
const MAX_DEFAULT_FLOWS: u64 = 65_536;
/// Splice pipes open at once where descriptors are plentiful.
const MAX_PIPES: u64 = 8192;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (before, after).
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The soft RLIMIT_NOFILE now (1024, the usual default, if it cannot be read).
pub fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Descriptors one listener may fill by default: half of the unreserved ones.
fn listener_share() -> u64 {
    descriptor_limit().saturating_sub(RESERVED_DESCRIPTORS) / 2
}

/// Default open connections of one TCP listener (two sockets each).
pub fn default_max_connections() -> usize {
    (listener_share() / 2).clamp(1, MAX_DEFAULT_CONNECTIONS) as usize
}

/// Default flows of one UDP listener (one socket each).
pub fn default_max_flows() -> usize {
    listener_share().clamp(1, MAX_DEFAULT_FLOWS) as usize
}

/// Splice pipes open at once in the whole process (two descriptors each):
/// an eighth of the unreserved descriptors at most.
pub fn max_pipes() -> usize {
    (descriptor_limit().saturating_sub(RESERVED_DESCRIPTORS) / 8).clamp(1, MAX_PIPES) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_room_for_every_other_listener() {
        let limit = descriptor_limit();
        let one_listener = 2 * default_max_connections() as u64;
        assert!(one_listener <= limit.saturating_sub(RESERVED_DESCRIPTORS) / 2 || one_listener == 2);
        assert!(default_max_flows() as u64 <= limit);
        assert!(2 * max_pipes() as u64 <= limit / 4 + 1);
    }
}
