//! The shared vocabulary: employees, contracts, days, decimals, runs,
//! mutations and plans. No I/O, no wire format, no configuration: every
//! other room imports this one, and it imports none of them.

pub mod attempt;
pub mod day;
mod decimal;
mod employee;
pub mod plan;
pub mod run;
mod secret;
mod sink;

pub use attempt::{Attempt, LastDelivery, Reason, Step};
pub use decimal::Decimal;
pub use employee::*;
pub use plan::{
    Change, Guards, Mutation, MutationKind, Plan, Provisioned, ProvisionedHead, Rules, SourceStats, Status, Write,
};
pub use run::{Outcome, RunRecord};
pub use secret::Secret;
pub use sink::{RunEvent, SinkKind};

/// A peer's text made safe to print or log: control characters (newlines,
/// terminal escapes) shown as `\u{..}`, at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn a_peer_text_prints_without_control_characters_and_within_its_length() {
        assert_eq!(printable("a\nb\u{1b}[31mc", 100), "a\\u{a}b\\u{1b}[31mc");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("ok", 3), "ok");
    }
}
