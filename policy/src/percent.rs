//! Percentages in Fulcrum's own kinds, stored as integer basis points.
//!
//! The failover engine runs inside a Raft state machine and must compute identical bytes on
//! every replica, so thresholds are integers: `12.5%` is 1250 basis points. YAML may say
//! `12.5%` (a string) or `12.5` (a number, read as percent like Istio's `percentage.value`);
//! more precision than 0.01% is refused rather than rounded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decode::{Decode, Decoder};
use crate::yaml::{Node, Resolved, Value};

/// Basis points in one hundred percent.
pub const BASIS_POINTS_PER_WHOLE: u32 = 10_000;

/// A percentage with 0.01% resolution. Values above 100% can be represented (so validation
/// can report them) but are refused wherever they make no sense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    basis_points: u32,
}

/// Why a percentage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid percentage {text:?}: {reason} (write it like 50% or 12.5%)")]
pub struct PercentError {
    text: String,
    reason: &'static str,
}

impl Percent {
    /// 0%.
    pub const ZERO: Percent = Percent { basis_points: 0 };
    /// 100%.
    pub const WHOLE: Percent = Percent {
        basis_points: BASIS_POINTS_PER_WHOLE,
    };

    /// From basis points (1 = 0.01%).
    pub const fn from_basis_points(basis_points: u32) -> Percent {
        Percent { basis_points }
    }

    /// From whole percent.
    pub const fn from_percent(percent: u32) -> Percent {
        Percent {
            basis_points: percent.saturating_mul(100),
        }
    }

    /// In basis points (1 = 0.01%).
    pub const fn basis_points(self) -> u32 {
        self.basis_points
    }

    fn parse_number(text: &str, original: &str) -> Result<Percent, PercentError> {
        let fail = |reason| PercentError {
            text: original.to_string(),
            reason,
        };
        let text = text.trim();
        if text.starts_with('-') {
            return Err(fail("it is negative"));
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
            return Err(fail("it is not a number"));
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 2 {
            return Err(fail("more precise than 0.01%"));
        }
        let whole: u32 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| fail("it is too large"))?
        };
        let hundredths: u32 = format!("{fraction:0<2}").parse().unwrap_or(0);
        let basis_points = whole
            .checked_mul(100)
            .and_then(|bp| bp.checked_add(hundredths))
            .ok_or_else(|| fail("it is too large"))?;
        Ok(Percent { basis_points })
    }
}

impl FromStr for Percent {
    type Err = PercentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = text.strip_suffix('%').unwrap_or(text);
        Percent::parse_number(number, text)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.basis_points / 100;
        let fraction = self.basis_points % 100;
        if fraction == 0 {
            write!(f, "{whole}%")
        } else if fraction.is_multiple_of(10) {
            write!(f, "{whole}.{}%", fraction / 10)
        } else {
            write!(f, "{whole}.{fraction:02}%")
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Decode for Percent {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        let Value::Scalar(scalar) = &node.value else {
            d.error(
                node.mark,
                format!(
                    "expected a percentage such as 50%, found {}",
                    node.describe()
                ),
            );
            return Percent::ZERO;
        };
        let parsed = match scalar.resolve() {
            Resolved::Str(text) => text.parse(),
            // Numbers are read from their text, so 12.5 is exactly 1250 basis points.
            Resolved::Int(_) | Resolved::Float(_) => {
                Percent::parse_number(&scalar.text, &scalar.text)
            }
            Resolved::Null => return Percent::ZERO,
            _ => {
                d.error(
                    node.mark,
                    format!(
                        "expected a percentage such as 50%, found {}",
                        node.describe()
                    ),
                );
                return Percent::ZERO;
            }
        };
        parsed.unwrap_or_else(|e| {
            d.error(node.mark, e.to_string());
            Percent::ZERO
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_with_and_without_the_sign() {
        assert_eq!("50%".parse::<Percent>().unwrap().basis_points(), 5000);
        assert_eq!("12.5%".parse::<Percent>().unwrap().basis_points(), 1250);
        assert_eq!("0.01%".parse::<Percent>().unwrap().basis_points(), 1);
        assert_eq!("100".parse::<Percent>().unwrap(), Percent::WHOLE);
        assert_eq!("7.50%".parse::<Percent>().unwrap().basis_points(), 750);
    }

    #[test]
    fn refuses_what_it_cannot_represent_exactly() {
        for bad in ["", "%", "-5%", "0.001%", "fifty%", "1.2.3%", "99999999999%"] {
            assert!(bad.parse::<Percent>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_reads_back() {
        for bp in [0, 1, 10, 99, 100, 1250, 5000, 10_000, 12_345] {
            let p = Percent::from_basis_points(bp);
            assert_eq!(p.to_string().parse::<Percent>().unwrap(), p);
        }
        assert_eq!(Percent::from_basis_points(1250).to_string(), "12.5%");
    }
}
