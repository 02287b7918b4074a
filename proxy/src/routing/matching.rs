//! Compiled match conditions of a VirtualService HTTP route: each `StringMatch` becomes a
//! [`Matcher`] once (regexes compiled and anchored, as RE2's full match), so matching a
//! request allocates nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use fulcrum_policy::istio::{HttpMatchRequest, StringMatch, StringMatchKind};
use http::HeaderMap;
use regex::Regex;

use super::{RouteError, RouteRequest};

/// One compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Fully matches (anchored).
    Regex(Regex),
    /// Any value: the field is there. What istiod makes of a `StringMatch` that sets
    /// nothing (`x-canary: {}`), or of the regex `*` (not RE2: a presence match).
    Present,
}

impl Matcher {
    /// Compiles `m`; `field` names it in errors.
    pub fn compile(m: &StringMatch, field: &str) -> Result<Matcher, RouteError> {
        let set = [&m.exact, &m.prefix, &m.regex];
        if set.iter().filter(|v| v.is_some()).count() > 1 {
            return Err(RouteError::new(
                field,
                "only one of exact, prefix or regex may be set",
            ));
        }
        match m.kind() {
            Some(StringMatchKind::Exact(e)) => Ok(Matcher::Exact(e.to_string())),
            Some(StringMatchKind::Prefix(p)) => Ok(Matcher::Prefix(p.to_string())),
            Some(StringMatchKind::Regex("*")) | None => Ok(Matcher::Present),
            Some(StringMatchKind::Regex(r)) => Regex::new(&format!("^(?:{r})$"))
                .map(Matcher::Regex)
                .map_err(|e| RouteError::new(field, format!("invalid regex {r:?}: {e}"))),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(e) => value == e,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
            Matcher::Present => true,
        }
    }

    /// Whether `value` matches, ignoring ASCII case for exact and prefix (Istio's
    /// `ignoreUriCase`; regexes are as written).
    fn matches_ignoring_case(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(e) => value.eq_ignore_ascii_case(e),
            Matcher::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Matcher::Regex(r) => r.is_match(value),
            Matcher::Present => true,
        }
    }
}

/// One compiled match block: every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    uri: Option<Matcher>,
    ignore_uri_case: bool,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    without_headers: Vec<(String, Matcher)>,
    query_params: Vec<(String, Matcher)>,
    port: Option<u16>,
    /// Conditions on the calling workload (labels, namespace) or on gateways other than
    /// `mesh`: a cluster proxy carries many workloads' calls and knows none of them, so a
    /// block with such a condition never matches here rather than matching everyone.
    needs_source: bool,
}

fn compile_map(
    map: &BTreeMap<String, StringMatch>,
    field: &str,
) -> Result<Vec<(String, Matcher)>, RouteError> {
    map.iter()
        .map(|(name, m)| {
            Matcher::compile(m, &format!("{field}.{name}")).map(|c| (name.to_ascii_lowercase(), c))
        })
        .collect()
}

impl MatchBlock {
    /// Compiles one `match` entry; `field` is its path, e.g. `http[0].match[1]`.
    pub fn compile(m: &HttpMatchRequest, field: &str) -> Result<MatchBlock, RouteError> {
        let one = |s: &Option<StringMatch>, name: &str| {
            s.as_ref()
                .map(|s| Matcher::compile(s, &format!("{field}.{name}")))
                .transpose()
        };
        let port = match m.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                RouteError::new(format!("{field}.port"), format!("{p} is not a port"))
            })?),
        };
        Ok(MatchBlock {
            uri: one(&m.uri, "uri")?,
            ignore_uri_case: m.ignore_uri_case,
            scheme: one(&m.scheme, "scheme")?,
            method: one(&m.method, "method")?,
            authority: one(&m.authority, "authority")?,
            headers: compile_map(&m.headers, &format!("{field}.headers"))?,
            without_headers: compile_map(&m.without_headers, &format!("{field}.withoutHeaders"))?,
            query_params: compile_map(&m.query_params, &format!("{field}.queryParams"))?,
            port,
            needs_source: !m.source_labels.is_empty()
                || !m.source_namespace.is_empty()
                || (!m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh")),
        })
    }

    /// Whether a request on `port` could meet this block: it is for that port (or any),
    /// and for no particular source.
    pub fn could_match_on(&self, port: u16) -> bool {
        !self.needs_source && self.port.is_none_or(|p| p == port)
    }

    /// Whether `request` meets every condition of this block.
    pub fn matches(&self, request: &RouteRequest<'_>) -> bool {
        if self.needs_source {
            return false;
        }
        let path = request.path();
        let uri_ok = self.uri.as_ref().is_none_or(|m| {
            if self.ignore_uri_case {
                m.matches_ignoring_case(path)
            } else {
                m.matches(path)
            }
        });
        uri_ok
            && self
                .scheme
                .as_ref()
                .is_none_or(|m| m.matches(request.scheme))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(request.method))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| match request.authority_port {
                    // As Envoy reads `:authority`: as sent, its port included.
                    Some(port) => m.matches(&format!("{}:{port}", request.authority)),
                    None => m.matches(request.authority),
                })
            && self.port.is_none_or(|p| p == request.port)
            && self
                .headers
                .iter()
                .all(|(name, m)| header(request.headers, name).is_some_and(|v| m.matches(&v)))
            && self.without_headers.iter().all(|(name, m)| {
                // As istiod sets Envoy up: inverted, a missing field taken as empty but
                // for a presence match (`x-debug: {}` holds when there is no x-debug).
                match (header(request.headers, name), m) {
                    (None, Matcher::Present) => true,
                    (value, m) => !m.matches(value.as_deref().unwrap_or("")),
                }
            })
            && self
                .query_params
                .iter()
                .all(|(name, m)| query_param(request.query(), name).is_some_and(|v| m.matches(v)))
    }

    /// The prefix this block matched the path on, when it matched by prefix (a rewrite
    /// replaces only that part). A block with no condition on the path matches it by the
    /// prefix `/`, as istiod writes it for Envoy.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(Matcher::Prefix(p)) => Some(p),
            None | Some(Matcher::Present) => Some("/"),
            Some(Matcher::Exact(_) | Matcher::Regex(_)) => None,
        }
    }
}

/// The value of header `name` as Envoy matches it: when the field comes more than once,
/// its values joined by commas (`cookie` crumbs, which h2 clients may send apart, by
/// `; `, as Envoy's codec puts them back together). Values that are not text are left
/// out; none at all when it has none.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let separator = if name == "cookie" { "; " } else { "," };
    let mut joined = format!("{first}{separator}{second}");
    for more in values {
        joined.push_str(separator);
        joined.push_str(more);
    }
    Some(Cow::Owned(joined))
}

/// The value of query parameter `name` (the first, as written; a bare `name` is "").
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> StringMatch {
        StringMatch {
            exact: Some(s.into()),
            ..StringMatch::default()
        }
    }

    #[test]
    fn regexes_must_match_the_whole_value() {
        let m = Matcher::compile(
            &StringMatch {
                regex: Some("/v[0-9]".into()),
                ..StringMatch::default()
            },
            "uri",
        )
        .unwrap();
        assert!(m.matches("/v1"));
        assert!(!m.matches("/v1/users"));
        assert!(!m.matches("x/v1"));
    }

    #[test]
    fn a_bad_regex_names_its_field() {
        let err = Matcher::compile(
            &StringMatch {
                regex: Some("(".into()),
                ..StringMatch::default()
            },
            "http[0].match[0].uri",
        )
        .unwrap_err();
        assert_eq!(err.field, "http[0].match[0].uri");
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix() {
        let m = Matcher::compile(&exact("/Cart"), "uri").unwrap();
        assert!(m.matches_ignoring_case("/cART"));
        assert!(!m.matches("/cART"));
        let p = Matcher::Prefix("/API/".into());
        assert!(p.matches_ignoring_case("/api/v1"));
        assert!(!p.matches_ignoring_case("/ap"));
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(query_param("a=1&b=2", "b"), Some("2"));
        assert_eq!(query_param("a=1&debug", "debug"), Some(""));
        assert_eq!(query_param("ab=1", "a"), None);
    }
}
