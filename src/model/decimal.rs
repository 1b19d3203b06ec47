//! Exact decimal amounts (money, FTE, hours).

use std::fmt;

/// A decimal amount with four fractional digits, stored exactly as an
/// integer number of ten-thousandths. Money and FTE fit easily; binary
/// floats would make "unchanged" amounts differ between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Decimal(i64);

impl Decimal {
    pub const SCALE: i64 = 10_000;
    /// Largest magnitude accepted (a trillion): beyond any salary or budget.
    pub const MAX_UNITS: i64 = 1_000_000_000_000 * Self::SCALE;

    pub fn from_units(units: i64) -> Self {
        Decimal(units)
    }
    pub fn units(self) -> i64 {
        self.0
    }

    /// Parses `-12.5`, `12,50` (Dutch comma), `.5`; refuses exponents, NaN,
    /// more than 4 decimals that are not zero, and absurd magnitudes.
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        // One decimal separator, `.` or the Dutch `,`.
        let (int_part, frac_part) = match digits.find(['.', ',']) {
            Some(i) => (&digits[..i], &digits[i + 1..]),
            None => (digits, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_trimmed = frac_part.trim_end_matches('0');
        if frac_trimmed.len() > 4 {
            return None;
        }
        let int_trimmed = int_part.trim_start_matches('0');
        if int_trimmed.len() > 13 {
            return None;
        }
        let int_val: i64 = if int_trimmed.is_empty() {
            0
        } else {
            int_trimmed.parse().ok()?
        };
        let mut frac_val: i64 = 0;
        for (i, b) in frac_trimmed.bytes().enumerate() {
            frac_val += i64::from(b - b'0') * 10_i64.pow(3 - i as u32);
        }
        let units = int_val.checked_mul(Self::SCALE)?.checked_add(frac_val)?;
        if units > Self::MAX_UNITS {
            return None;
        }
        Some(Decimal(if neg { -units } else { units }))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / Self::SCALE as u64;
        let frac = abs % Self::SCALE as u64;
        if frac == 0 {
            write!(f, "{sign}{int}")
        } else {
            // Four decimals without their trailing zeros: 0.0500 → 0.05.
            let (mut digits, mut width) = (frac, 4);
            while digits % 10 == 0 {
                digits /= 10;
                width -= 1;
            }
            write!(f, "{sign}{int}.{digits:0width$}")
        }
    }
}
