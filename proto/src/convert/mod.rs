//! Conversions between wire messages and fulcrum-policy types.
//!
//! Outbound (`From<&Domain> for Message`) cannot fail. Inbound (`TryFrom<&Message> for
//! Domain`) checks everything a peer could get wrong and returns a [`WireError`] naming
//! the field, such as `weights[2].entries[0].destination.zone`.

mod common;
mod control;

use fulcrum_policy::Diagnostic;

/// Why a wire message was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A field that must be set is not.
    #[error("{field}: required field is missing")]
    Missing {
        /// Path of the field in the message.
        field: String,
    },
    /// A field holds a value the receiver cannot accept.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field in the message.
        field: String,
        /// Why, for an operator.
        reason: String,
    },
    /// A configuration object that fulcrum-policy rejects.
    #[error("{field}: {}", summary(.diagnostics))]
    InvalidResource {
        /// Path of the field in the message.
        field: String,
        /// The validator's findings.
        diagnostics: Vec<Diagnostic>,
    },
}

fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            if d.path.is_root() {
                d.message.clone()
            } else {
                format!("{}: {}", d.path, d.message)
            }
        })
        .collect();
    match errors.as_slice() {
        [] => "the resource is invalid".to_string(),
        [one] => format!("invalid resource: {one}"),
        [first, rest @ ..] => format!(
            "invalid resource: {first} (and {} more error{})",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

impl WireError {
    pub(crate) fn missing(field: &str) -> Self {
        WireError::Missing {
            field: field.to_string(),
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        WireError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The path of the field the error is about.
    pub fn field(&self) -> &str {
        match self {
            WireError::Missing { field }
            | WireError::Invalid { field, .. }
            | WireError::InvalidResource { field, .. } => field,
        }
    }

    /// The same error, for a field nested under `prefix` (`entries[2]`, `locality`).
    pub fn within(mut self, prefix: &str) -> Self {
        let field = match &mut self {
            WireError::Missing { field }
            | WireError::Invalid { field, .. }
            | WireError::InvalidResource { field, .. } => field,
        };
        *field = if field.is_empty() {
            prefix.to_string()
        } else if field.starts_with('[') {
            format!("{prefix}{field}")
        } else {
            format!("{prefix}.{field}")
        };
        self
    }
}

/// Converts each element, naming the failing one as `field[i]`.
pub(crate) fn each<'a, M: 'a, D>(
    field: &str,
    items: impl IntoIterator<Item = &'a M>,
    convert: impl Fn(&'a M) -> Result<D, WireError>,
) -> Result<Vec<D>, WireError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}

/// The required sub-message `field`, converted.
pub(crate) fn required<'a, M, D>(
    field: &str,
    value: Option<&'a M>,
    convert: impl Fn(&'a M) -> Result<D, WireError>,
) -> Result<D, WireError> {
    match value {
        Some(v) => convert(v).map_err(|e| e.within(field)),
        None => Err(WireError::missing(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_name_the_full_path() {
        let e = WireError::invalid("zone", "contains '/'")
            .within("destination")
            .within("entries[0]")
            .within("weights[2]");
        assert_eq!(e.field(), "weights[2].entries[0].destination.zone");
        assert_eq!(
            e.to_string(),
            "weights[2].entries[0].destination.zone: contains '/'"
        );
    }
}
