//! `allow`, `deny` and `trusted_proxies`, at the top level (defaults for
//! every listener) or on a listener (its own, each key replacing the
//! default's).

use super::*;
use crate::access::{Access, Prefixes};
use crate::config::error::quoted;

/// The three keys as written, wherever they are.
pub(super) struct RawAccess<'a> {
    pub allow: Option<&'a Spanned<Vec<String>>>,
    pub deny: Option<&'a Spanned<Vec<String>>>,
    pub trusted_proxies: Option<&'a Spanned<Vec<String>>>,
}

impl Validator<'_> {
    /// The rules `raw` sets, the others from `inherited`.
    pub(super) fn access(&mut self, scope: &Scope, raw: RawAccess, inherited: &Access) -> Access {
        let mut prefixes = |value: Option<&Spanned<Vec<String>>>, key: &str| {
            let value = value?;
            let parsed = Prefixes::parse(value.get_ref().iter().map(String::as_str));
            parsed
                .map_err(|(entry, why)| {
                    self.problem_at(scope, value, key, format!("{}: {why}", quoted(&entry)))
                })
                .ok()
        };
        let allow = prefixes(raw.allow, "allow");
        let deny = prefixes(raw.deny, "deny");
        let trusted_proxies = prefixes(raw.trusted_proxies, "trusted_proxies");
        Access {
            allow: if raw.allow.is_some() {
                allow
            } else {
                inherited.allow.clone()
            },
            deny: if raw.deny.is_some() {
                deny.unwrap_or_default()
            } else {
                inherited.deny.clone()
            },
            trusted_proxies: if raw.trusted_proxies.is_some() {
                trusted_proxies
            } else {
                inherited.trusted_proxies.clone()
            },
        }
    }
}
