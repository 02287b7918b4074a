//! What a YAML scalar means: kept as written (text, style, explicit tag) and resolved on
//! demand under the YAML 1.2 core schema, so each field can say what it expected.

/// A scalar exactly as written, with its style and explicit tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The text after escape processing.
    pub text: String,
    /// Plain scalars are typed by their content; every other style is a string.
    pub plain: bool,
    /// The explicit tag, if one was written.
    pub tag: Option<ScalarTag>,
}

/// The explicit tags a scalar may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalarTag {
    /// `!!str` or the non-specific `!`.
    Str,
    /// `!!int`.
    Int,
    /// `!!float`.
    Float,
    /// `!!bool`.
    Bool,
    /// `!!null`.
    Null,
    /// Any other tag, which Fulcrum does not interpret.
    Other(String),
}

/// What a scalar means under the YAML 1.2 core schema (the one Kubernetes tooling follows for
/// these forms), or which explicit tag made it so.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved<'a> {
    /// `~`, `null`, or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A decimal, `0x` hexadecimal or `0o` octal integer.
    Int(i128),
    /// A floating point number (including `.inf` and `.nan`).
    Float(f64),
    /// Anything else, or any quoted or block scalar.
    Str(&'a str),
    /// An explicit tag whose content does not parse, or an unknown tag.
    Invalid(String),
}

impl Scalar {
    /// Resolves the scalar to a typed value.
    pub fn resolve(&self) -> Resolved<'_> {
        let text = self.text.as_str();
        match &self.tag {
            Some(ScalarTag::Str) => Resolved::Str(text),
            Some(ScalarTag::Null) => Resolved::Null,
            Some(ScalarTag::Bool) => match parse_bool(text) {
                Some(b) => Resolved::Bool(b),
                None => Resolved::Invalid(format!("{text:?} is not a boolean")),
            },
            Some(ScalarTag::Int) => match parse_int(text) {
                Some(i) => Resolved::Int(i),
                None => Resolved::Invalid(format!("{text:?} is not an integer")),
            },
            Some(ScalarTag::Float) => match parse_int(text)
                .map(|i| i as f64)
                .or_else(|| parse_float(text))
            {
                Some(f) => Resolved::Float(f),
                None => Resolved::Invalid(format!("{text:?} is not a number")),
            },
            Some(ScalarTag::Other(tag)) => {
                Resolved::Invalid(format!("the YAML tag {tag} is not supported here"))
            }
            None if !self.plain => Resolved::Str(text),
            None => {
                if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
                    Resolved::Null
                } else if let Some(b) = parse_bool(text) {
                    Resolved::Bool(b)
                } else if let Some(i) = parse_int(text) {
                    Resolved::Int(i)
                } else if let Some(f) = parse_float(text) {
                    Resolved::Float(f)
                } else {
                    Resolved::Str(text)
                }
            }
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_int(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        if oct.is_empty() || !oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return None;
        }
        i128::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i128>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    match unsigned {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if text.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        ".nan" | ".NaN" | ".NAN" if unsigned.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    // The core schema's float: digits with an optional fraction and exponent, at least one
    // digit in the mantissa. Rust's parser also accepts "inf" and "NaN", which YAML does not.
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next().unwrap_or("");
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
        return None;
    }
    if let Some(exp) = exponent {
        let exp = exp.strip_prefix(['-', '+']).unwrap_or(exp);
        if exp.is_empty() || !digits_ok(exp) {
            return None;
        }
    }
    text.parse::<f64>().ok()
}

pub(super) fn classify_tag(handle: &str, suffix: &str) -> ScalarTag {
    const CORE: &str = "tag:yaml.org,2002:";
    if handle == "!" && suffix.is_empty() {
        return ScalarTag::Str;
    }
    if handle == CORE {
        match suffix {
            "str" => return ScalarTag::Str,
            "int" => return ScalarTag::Int,
            "float" => return ScalarTag::Float,
            "bool" => return ScalarTag::Bool,
            "null" => return ScalarTag::Null,
            _ => {}
        }
    }
    ScalarTag::Other(format!("{handle}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_follow_the_core_schema() {
        assert_eq!(parse_float("1.5"), Some(1.5));
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("-.inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("inf"), None);
        assert_eq!(parse_float("1.2.3"), None);
        assert_eq!(parse_float("."), None);
        assert_eq!(parse_int("-42"), Some(-42));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("12a"), None);
    }
}
