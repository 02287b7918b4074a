//! Typed models of the `networking.istio.io` resources Fulcrum reads: VirtualService,
//! DestinationRule, ServiceEntry and WorkloadEntry (served at `v1`, `v1beta1` and `v1alpha3`
//! with one schema), plus the small types they share.

mod destination_rule;
mod service_entry;
mod virtual_service;

pub use destination_rule::*;
pub use service_entry::*;
pub use virtual_service::*;

use crate::decode::model;

/// The API group of Istio's networking resources.
pub const GROUP: &str = "networking.istio.io";

/// The versions of [`GROUP`] that serve the same schema.
pub const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

model! {
    /// A string condition: exactly one of `exact`, `prefix` or `regex` (RE2, full match).
    pub struct StringMatch {
        /// Equal to this.
        optional exact: Option<String> = "exact",
        /// Starts with this.
        optional prefix: Option<String> = "prefix",
        /// Fully matches this RE2 expression.
        optional regex: Option<String> = "regex",
    }
}

/// One way of matching a string, borrowed from a [`StringMatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    /// Equal to.
    Exact(&'a str),
    /// Starts with.
    Prefix(&'a str),
    /// Fully matches the RE2 expression.
    Regex(&'a str),
}

impl StringMatch {
    /// The condition, when exactly one way is set (validation rejects more than one).
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }
}

model! {
    /// A port of a destination.
    pub struct PortSelector {
        /// Port number.
        optional number: u32 = "number",
    }
}

model! {
    /// A fractional percentage, like `{value: 12.5}`.
    pub struct Percentage {
        /// Percent, from 0 to 100.
        optional value: f64 = "value",
    }
}
