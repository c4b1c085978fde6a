//! Listeners given on the command line as `[ADDR:]PORT[/udp]:SERVICE`. Each
//! becomes the table a file would hold (`bind`, `protocol`, `service`), so it
//! is validated, and gets its defaults, exactly like one.

use toml::Spanned;

use super::Protocol;
use super::error::quoted;
use super::raw::RawListener;

const FORM: &str = "expected [ADDR:]PORT[/udp]:SERVICE, e.g. 2003:graphite";

/// `text` as a listener table, read and as written; an error when it is
/// not of the form at all.
pub(super) fn parse(text: &str) -> Result<(RawListener, toml::Table), String> {
    let (head, service) = text.rsplit_once(':').ok_or_else(|| FORM.to_string())?;
    let (head, protocol) = match head.strip_suffix("/udp") {
        Some(head) => (head, Protocol::Udp),
        None => (head.strip_suffix("/tcp").unwrap_or(head), Protocol::Tcp),
    };
    let bind = match head.parse::<u16>() {
        Ok(port) => format!("0.0.0.0:{port}"),
        Err(_) if head.contains(':') => head.to_string(),
        Err(_) => return Err(format!("invalid address {}; {FORM}", quoted(head))),
    };
    // A shorthand has no lines: problems are located at the listener itself.
    let here = |value| Some(Spanned::new(0..0, value));
    let mut written = toml::Table::new();
    written.insert("bind".into(), bind.clone().into());
    written.insert("protocol".into(), protocol.to_string().into());
    written.insert("service".into(), service.into());
    let raw = RawListener {
        bind: here(bind),
        protocol: Some(Spanned::new(0..0, protocol)),
        service: here(service.to_string()),
        ..RawListener::default()
    };
    Ok((raw, written))
}
