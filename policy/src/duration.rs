//! Durations as Istio writes them: `250ms`, `10s`, `1m30s`, `1h`, `1.5s`.
//!
//! Istio's CRDs check durations with CEL's `duration()`, which reads Go's duration syntax:
//! an optional sign, then one or more `<number><unit>` with units `ns`, `us` (`µs`), `ms`,
//! `s`, `m` and `h`. This type parses exactly that and keeps nanosecond precision, so
//! validation can say "only millisecond precision is supported" instead of rounding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decode::{Decode, Decoder};
use crate::yaml::{Node, Resolved, Value};

/// A signed duration with nanosecond precision (Go's `time.Duration` range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    nanos: i64,
}

const NANOS_PER_MICRO: i64 = 1_000;
const NANOS_PER_MILLI: i64 = 1_000_000;
const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_MINUTE: i64 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: i64 = 60 * NANOS_PER_MINUTE;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason} (write it like 250ms, 10s, 1m30s or 1h)")]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl Duration {
    /// Zero.
    pub const ZERO: Duration = Duration { nanos: 0 };

    /// A duration of `n` milliseconds.
    pub const fn from_millis(n: i64) -> Duration {
        Duration {
            nanos: n.saturating_mul(NANOS_PER_MILLI),
        }
    }

    /// A duration of `n` seconds.
    pub const fn from_secs(n: i64) -> Duration {
        Duration {
            nanos: n.saturating_mul(NANOS_PER_SECOND),
        }
    }

    /// A duration of `n` nanoseconds.
    pub const fn from_nanos(n: i64) -> Duration {
        Duration { nanos: n }
    }

    /// The length in nanoseconds (negative for negative durations).
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// The length in whole milliseconds, rounded toward zero.
    pub const fn as_millis(self) -> i64 {
        self.nanos / NANOS_PER_MILLI
    }

    /// True when the duration has no part smaller than a millisecond.
    pub const fn is_whole_millis(self) -> bool {
        self.nanos % NANOS_PER_MILLI == 0
    }

    /// True when the duration has no part smaller than a second.
    pub const fn is_whole_seconds(self) -> bool {
        self.nanos % NANOS_PER_SECOND == 0
    }

    /// The standard library form, or `None` for a negative duration.
    pub fn to_std(self) -> Option<std::time::Duration> {
        u64::try_from(self.nanos)
            .ok()
            .map(std::time::Duration::from_nanos)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            text: text.to_string(),
            reason,
        };
        let (negative, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            Some(_) => (false, text),
            None => return Err(fail("it is empty")),
        };
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        if rest.is_empty() {
            return Err(fail("it has no number"));
        }
        // Accumulate in i128 so that overflow is detected once, at the end.
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| fail("a number has no unit"))?;
            let number = &rest[..number_end];
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(fail("a unit has no valid number before it"));
            }
            rest = &rest[number_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale: i128 = match &rest[..unit_end] {
                "ns" => 1,
                "us" | "µs" | "μs" => NANOS_PER_MICRO.into(),
                "ms" => NANOS_PER_MILLI.into(),
                "s" => NANOS_PER_SECOND.into(),
                "m" => NANOS_PER_MINUTE.into(),
                "h" => NANOS_PER_HOUR.into(),
                "" => return Err(fail("a number has no unit")),
                _ => return Err(fail("unknown unit; use ns, us, ms, s, m or h")),
            };
            rest = &rest[unit_end..];
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            let whole: i128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| fail("a number is too large"))?
            };
            let mut part = whole
                .checked_mul(scale)
                .ok_or_else(|| fail("it is too long"))?;
            // Digits past nanosecond precision cannot change the value; ignore them as Go does.
            let mut place = scale;
            for digit in fraction.bytes() {
                place /= 10;
                if place == 0 {
                    break;
                }
                part += i128::from(digit - b'0') * place;
            }
            total = total
                .checked_add(part)
                .ok_or_else(|| fail("it is too long"))?;
        }
        let nanos = i64::try_from(if negative { -total } else { total })
            .map_err(|_| fail("it is longer than about 292 years"))?;
        Ok(Duration { nanos })
    }
}

impl fmt::Display for Duration {
    /// The shortest form that reads back to the same value: `250ms`, `10s`, `1m30s`,
    /// `1h5m0.5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0s");
        }
        if self.nanos < 0 {
            f.write_str("-")?;
        }
        let mut n = self.nanos.unsigned_abs();
        if n < NANOS_PER_SECOND as u64 {
            return if n.is_multiple_of(NANOS_PER_MILLI as u64) {
                write!(f, "{}ms", n / NANOS_PER_MILLI as u64)
            } else if n.is_multiple_of(NANOS_PER_MICRO as u64) {
                write!(f, "{}us", n / NANOS_PER_MICRO as u64)
            } else {
                write!(f, "{n}ns")
            };
        }
        let hours = n / NANOS_PER_HOUR as u64;
        n %= NANOS_PER_HOUR as u64;
        let minutes = n / NANOS_PER_MINUTE as u64;
        n %= NANOS_PER_MINUTE as u64;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if n > 0 {
            let seconds = n / NANOS_PER_SECOND as u64;
            let fraction = n % NANOS_PER_SECOND as u64;
            if fraction == 0 {
                write!(f, "{seconds}s")?;
            } else {
                let digits = format!("{fraction:09}");
                write!(f, "{seconds}.{}s", digits.trim_end_matches('0'))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Decode for Duration {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        let text = match &node.value {
            Value::Scalar(s) => match s.resolve() {
                Resolved::Str(t) => t,
                // A bare `0` is a valid Go duration.
                Resolved::Int(0) => "0",
                Resolved::Null => return Duration::ZERO,
                _ => {
                    d.error(
                        node.mark,
                        format!(
                            "expected a duration such as 10s, found {}{}",
                            node.describe(),
                            if matches!(s.resolve(), Resolved::Int(_) | Resolved::Float(_)) {
                                " (add a unit: ms, s, m or h)"
                            } else {
                                ""
                            }
                        ),
                    );
                    return Duration::ZERO;
                }
            },
            _ => {
                d.error(
                    node.mark,
                    format!("expected a duration such as 10s, found {}", node.describe()),
                );
                return Duration::ZERO;
            }
        };
        match text.parse() {
            Ok(duration) => duration,
            Err(e) => {
                d.error(node.mark, e.to_string());
                Duration::ZERO
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Duration>().unwrap().as_millis()
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("300s"), 300_000);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms("-2s"), -2_000);
        assert_eq!("1us".parse::<Duration>().unwrap().as_nanos(), 1_000);
        assert_eq!("1µs".parse::<Duration>().unwrap().as_nanos(), 1_000);
    }

    #[test]
    fn refuses_malformed_text_with_a_reason() {
        for bad in [
            "",
            "10",
            "s",
            "1x",
            "1.2.3s",
            "ten seconds",
            "1s2",
            "--1s",
            "3000000h",
        ] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_reads_back_to_the_same_value() {
        for text in [
            "250ms", "10s", "1m30s", "1h", "1h5m0.5s", "1.5ms", "7ns", "-3s", "0s",
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d, "{text}");
        }
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
    }

    #[test]
    fn precision_helpers() {
        assert!("1500ms".parse::<Duration>().unwrap().is_whole_millis());
        assert!(!"1500us".parse::<Duration>().unwrap().is_whole_millis());
        assert!(!"1500ms".parse::<Duration>().unwrap().is_whole_seconds());
    }
}
