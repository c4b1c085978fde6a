//! systemd's service notifications (`sd_notify`), for units of
//! `Type=notify` or `Type=notify-reload`: `READY=1` once every listener is
//! bound and has had its first discovery answer (as `/ready`),
//! `RELOADING=1` with `MONOTONIC_USEC` and then `READY=1` around each SIGHUP
//! reload, `STOPPING=1` at shutdown, and `STATUS=` with a one-line summary
//! each time. Without `NOTIFY_SOCKET` nothing is sent; a failure to send is
//! logged once at debug level and otherwise ignored, as a service manager
//! that stopped listening is no reason to stop serving.

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// Serving: every listener is bound and has its first answer.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd ≥ 253 needs the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutting down: connections are draining.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}
