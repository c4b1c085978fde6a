//! What is wrong with a configuration: [`Problem`]s with where they are, and
//! how bad values are quoted back (cut short, so a megabyte value never
//! makes a megabyte message).

use std::fmt;

/// How much of a bad value an error message quotes back.
const QUOTE_MAX_CHARS: usize = 64;

/// A problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line` or `listener '2003:graphite'`.
    pub location: String,
    pub message: String,
    pub kind: ProblemKind,
}

/// Most problems are values that are wrong wherever they are; a conflict is
/// a listener whose address another listener has (the API answers 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProblemKind {
    #[default]
    Invalid,
    Conflict,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(crate) fn one(location: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                location: location.into(),
                message: message.into(),
                kind: ProblemKind::Invalid,
            }],
        }
    }
}

/// `text` for an error message, cut short if long.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("`{}…` ({} bytes)", &text[..cut], text.len()),
        None => format!("`{text}`"),
    }
}

/// The longest message from the TOML parser passed on (its list of the
/// expected keys fits).
const MESSAGE_MAX_CHARS: usize = 1024;

/// A message from the TOML parser with every long quoted value in it cut
/// short (it quotes values whole, which may be a megabyte), and the whole
/// cut short too (a value may hold the quote characters themselves).
pub(super) fn shortened(message: &str) -> String {
    let out = shorten_quotes(message);
    match out.char_indices().nth(MESSAGE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

fn shorten_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut quote: Option<(char, usize)> = None; // the open quote, chars kept inside
    for c in message.chars() {
        match quote {
            Some((open, _)) if c == open => {
                quote = None;
                out.push(c);
            }
            Some((open, kept)) => {
                if kept < QUOTE_MAX_CHARS {
                    out.push(c);
                } else if kept == QUOTE_MAX_CHARS {
                    out.push('…');
                }
                quote = Some((open, kept + 1));
            }
            None => {
                if c == '"' || c == '`' {
                    quote = Some((c, 0));
                }
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_even_when_they_hold_quotes() {
        let value = format!("`{}", "y".repeat(100_000));
        let message = format!("unknown variant `{value}`, expected one of `a`, `b`");
        let short = shortened(&message);
        assert!(
            short.chars().count() <= MESSAGE_MAX_CHARS + 1,
            "{} chars",
            short.len()
        );
        assert!(shortened("unknown variant `aaaa`, expected `b`") == "unknown variant `aaaa`, expected `b`");
    }
}
