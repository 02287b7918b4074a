//! Localities (`region/zone/subzone`) and the patterns Istio matches them with.
//!
//! A [`Locality`] is where something runs: a cluster, a proxy, an endpoint. A
//! [`LocalityPattern`] is what a rule names: `us-east/*`, `*`, or `us-east` with the zone
//! omitted, matched exactly as istiod's `LocalityMatch` does (a `*` or an omitted part
//! matches anything; the region must always be given or be `*`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decode::{Decode, Decoder};
use crate::yaml::Node;

/// Where something runs. Parts may be empty: `us-east` has no zone or subzone.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// The region, e.g. `us-east`.
    pub region: String,
    /// The zone within the region, e.g. `us-east-1a`.
    pub zone: String,
    /// The subzone within the zone (rarely used).
    pub subzone: String,
}

/// Why a locality string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid locality {text:?}: {reason}")]
pub struct LocalityError {
    text: String,
    reason: &'static str,
}

impl Locality {
    /// A locality from its parts.
    pub fn new(region: &str, zone: &str, subzone: &str) -> Self {
        Locality {
            region: region.to_string(),
            zone: zone.to_string(),
            subzone: subzone.to_string(),
        }
    }

    /// True when region, zone and subzone are all empty.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl FromStr for Locality {
    type Err = LocalityError;

    /// Parses `region[/zone[/subzone]]`. Wildcards are patterns, not localities.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| LocalityError {
            text: text.to_string(),
            reason,
        };
        if text.contains('*') {
            return Err(fail(
                "a locality cannot contain '*' (only rules match patterns)",
            ));
        }
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 {
            return Err(fail("it has more than three parts (region/zone/subzone)"));
        }
        if text.is_empty() {
            return Ok(Locality::default());
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(fail("a part is empty"));
        }
        Ok(Locality {
            region: parts[0].to_string(),
            zone: parts.get(1).copied().unwrap_or_default().to_string(),
            subzone: parts.get(2).copied().unwrap_or_default().to_string(),
        })
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

impl Serialize for Locality {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Locality {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Decode for Locality {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        let text = String::decode(node, d);
        text.parse().unwrap_or_else(|e: LocalityError| {
            d.error(node.mark, e.to_string());
            Locality::default()
        })
    }
}

/// One part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PatternPart {
    /// `*`, or omitted: matches anything.
    Any,
    /// Must equal this text.
    Exact(String),
}

impl PatternPart {
    fn matches(&self, value: &str) -> bool {
        match self {
            PatternPart::Any => true,
            PatternPart::Exact(text) => text == value,
        }
    }
}

/// A locality as a rule names it: `us-east/us-east-1a`, `us-east/*`, `us-east`, `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalityPattern {
    text: String,
    region: PatternPart,
    zone: PatternPart,
    subzone: PatternPart,
}

impl LocalityPattern {
    /// True when `locality` is matched, by istiod's rule: the region must equal or be `*`;
    /// zone and subzone must equal, be `*`, or be omitted.
    pub fn matches(&self, locality: &Locality) -> bool {
        self.region.matches(&locality.region)
            && self.zone.matches(&locality.zone)
            && self.subzone.matches(&locality.subzone)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for a pattern with no wildcard and no omitted part below the region
    /// (`us-east/us-east-1a/rack1`).
    pub fn is_exact(&self) -> bool {
        [&self.region, &self.zone, &self.subzone]
            .iter()
            .all(|p| matches!(p, PatternPart::Exact(_)))
    }
}

impl FromStr for LocalityPattern {
    type Err = LocalityError;

    /// Parses a pattern. Like Istio, at most one `*`, and only as the last part.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| LocalityError {
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 {
            return Err(fail("it has more than three parts (region/zone/subzone)"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(fail("a part is empty"));
        }
        let stars = text.matches('*').count();
        if stars > 1 || (stars == 1 && !text.ends_with('*')) {
            return Err(fail("'*' may appear once, and only as the last part"));
        }
        // Like istiod, a part such as `us-*` is not a wildcard: it matches a region literally
        // named `us-*`. Validation warns about it; the pattern itself stays Istio's.
        let part = |i: usize| match parts.get(i) {
            None | Some(&"*") => PatternPart::Any,
            Some(p) => PatternPart::Exact((*p).to_string()),
        };
        Ok(LocalityPattern {
            text: text.to_string(),
            region: part(0),
            zone: part(1),
            subzone: part(2),
        })
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(text: &str) -> Locality {
        text.parse().unwrap()
    }

    fn pat(text: &str) -> LocalityPattern {
        text.parse().unwrap()
    }

    #[test]
    fn localities_parse_and_print() {
        let l = loc("us-east/us-east-1a/rack7");
        assert_eq!(l.region, "us-east");
        assert_eq!(l.zone, "us-east-1a");
        assert_eq!(l.subzone, "rack7");
        assert_eq!(l.to_string(), "us-east/us-east-1a/rack7");
        assert_eq!(loc("us-east").to_string(), "us-east");
        assert!("a/b/c/d".parse::<Locality>().is_err());
        assert!("a//c".parse::<Locality>().is_err());
        assert!("us-east/*".parse::<Locality>().is_err());
    }

    #[test]
    fn wildcards_and_omitted_parts_match_like_istio() {
        let east_1a = loc("us-east/us-east-1a/r1");
        assert!(pat("*").matches(&east_1a));
        assert!(pat("us-east").matches(&east_1a));
        assert!(pat("us-east/*").matches(&east_1a));
        assert!(pat("us-east/us-east-1a").matches(&east_1a));
        assert!(pat("us-east/us-east-1a/*").matches(&east_1a));
        assert!(pat("us-east/us-east-1a/r1").matches(&east_1a));
        assert!(!pat("us-east/us-east-1b").matches(&east_1a));
        assert!(!pat("us-west/*").matches(&east_1a));
        assert!(!pat("us-east/us-east-1a/r2").matches(&east_1a));
        assert!(pat("us-east/us-east-1a/r1").is_exact());
        assert!(!pat("us-east/*").is_exact());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["*/zone", "a/*/*", "a/b/c/d", "", "a//b"] {
            assert!(bad.parse::<LocalityPattern>().is_err(), "{bad}");
        }
        // Accepted as Istio does, as a literal that only matches a region named `us-*`.
        assert!(!pat("us-*").matches(&loc("us-east")));
    }
}
