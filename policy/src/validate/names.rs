//! The small syntactic checks Istio's validation is built from: DNS labels and names,
//! wildcard hosts, label keys and values, IPs and CIDRs, ports, header names, RE2 regexes.
//!
//! Each mirrors the Istio function named in its doc comment (istio/istio
//! `pkg/config/validation` and `pkg/config/labels`), so Fulcrum accepts and refuses the
//! same strings Istio does.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Longest DNS label.
const MAX_LABEL: usize = 63;
/// Longest DNS name.
const MAX_DOMAIN: usize = 255;
/// Longest regex Istio accepts.
const MAX_REGEX: usize = 1024;

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `labels.IsDNS1123Label`: letters (either case), digits and `-`, starting and ending
/// alphanumeric, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || c == '-')
}

/// Kubernetes' `IsDNS1123Subdomain` for object names: lowercase labels joined by dots.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|label| is_dns1123_label(label) && !label.chars().any(|c| c.is_ascii_uppercase()))
}

/// Kubernetes' namespace rule: a lowercase DNS-1123 label.
pub fn is_namespace(s: &str) -> bool {
    is_dns1123_label(s) && !s.chars().any(|c| c.is_ascii_uppercase())
}

/// `labels.IsWildcardDNS1123Label`: `*`, or a label optionally prefixed by `*` or `*-`.
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > MAX_LABEL {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

fn check_dns_preconditions(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".to_string());
    }
    if name.len() > MAX_DOMAIN {
        return Err(format!("domain name {name:?} too long (max {MAX_DOMAIN})"));
    }
    Ok(())
}

fn check_dns1123_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let top = labels.last().copied().unwrap_or_default();
    if !top.is_empty() && top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {top:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == labels.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// `agent.ValidateFQDN`.
pub fn check_fqdn(name: &str) -> Result<(), String> {
    check_dns_preconditions(name)?;
    check_dns1123_labels(name)
}

/// `agent.ValidateWildcardDomain`: an FQDN whose first label may be a wildcard.
pub fn check_wildcard_domain(name: &str) -> Result<(), String> {
    check_dns_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {name:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => check_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// `agent.ValidatePartialWildCard`: a `*` anywhere but as the whole first label.
pub fn check_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// `labels.validateTagKey`: an optional DNS prefix and `/`, then a qualified name.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || !prefix.split('.').all(is_dns1123_label) {
            return Err(format!(
                "invalid label key {key:?} (prefix must be a DNS name)"
            ));
        }
        if prefix.len() > 253 {
            return Err(format!(
                "invalid label key {key:?} (DNS prefix is too long)"
            ));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "invalid label key {key:?} (must be alphanumeric, '-', '_' or '.', starting and \
             ending alphanumeric)"
        ));
    }
    if name.len() > MAX_LABEL {
        return Err(format!("invalid label key {key:?} (name is too long)"));
    }
    Ok(())
}

fn is_qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars()
            .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.')
}

/// Istio's label value rule: empty, or a qualified name.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_qualified_name(value)
}

/// `labels.Instance.Validate`: every key and value, one message per problem.
pub fn label_problems(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (key, value) in labels {
        if let Err(e) = check_label_key(key) {
            problems.push((key.clone(), e));
        }
        if !is_label_value(value) {
            problems.push((key.clone(), format!("invalid label value {value:?}")));
        }
    }
    problems
}

/// `agent.ValidatePort`.
pub fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port must be between 1-65535, not {port}"))
    }
}

/// An IP address (IPv4 or IPv6), as `netip.ParseAddr` reads it.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// `agent.ValidateIPSubnet`: an IP, or an IP with a prefix length (`10.0.0.0/8`).
pub fn check_ip_subnet(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((addr, bits)) => {
            let Some(ip) = parse_ip(addr) else {
                return Err(format!("{s} is not a valid CIDR block"));
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match bits.parse::<u8>() {
                Ok(b) if b <= max && !bits.starts_with('+') => Ok(()),
                _ => Err(format!("{s} is not a valid CIDR block")),
            }
        }
        None => match parse_ip(s) {
            Some(_) => Ok(()),
            None => Err(format!("{s} is not a valid IP")),
        },
    }
}

/// `validation.ValidateHTTPHeaderName`: letters, digits, `-` and `_`.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("header name {name:?} is not a valid header name"));
    }
    Ok(())
}

/// `validation.ValidateHTTPHeaderValue`: no control characters.
pub fn check_header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    Ok(())
}

/// `validation.validateStringRegexp`: at most 1024 characters and valid RE2 syntax.
pub fn check_regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex must not be empty".to_string());
    }
    if re.len() > MAX_REGEX {
        return Err(format!(
            "regex is too large: {} characters, at most {MAX_REGEX} allowed",
            re.len()
        ));
    }
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| {
            let detail = match e {
                regex::Error::Syntax(text) => text
                    .lines()
                    .last()
                    .unwrap_or("invalid syntax")
                    .trim_start_matches("error: ")
                    .to_string(),
                regex::Error::CompiledTooBig(_) => "it compiles too large".to_string(),
                _ => "invalid regex".to_string(),
            };
            format!(
                "invalid regex {re:?}: {detail}; Istio uses RE2 syntax \
                 (https://github.com/google/re2/wiki/Syntax)"
            )
        })
}

/// Istio's `host.Name.Matches`: two hosts that can match the same request.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `inner` matches, `outer` matches too.
pub fn host_is_subset(inner: &str, outer: &str) -> bool {
    match (inner.strip_prefix('*'), outer.strip_prefix('*')) {
        (Some(si), Some(so)) => si.ends_with(so),
        (Some(_), None) => false,
        (None, Some(so)) => inner.ends_with(so),
        (None, None) => inner == outer,
    }
}

/// Istio's `protocol.Parse` (case-insensitive): the protocols a service port may name.
pub fn is_known_protocol(protocol: &str) -> bool {
    const KNOWN: &[&str] = &[
        "tcp",
        "udp",
        "grpc",
        "grpc-web",
        "http",
        "http_proxy",
        "http2",
        "https",
        "tls",
        "mongo",
        "redis",
        "mysql",
    ];
    KNOWN.iter().any(|p| p.eq_ignore_ascii_case(protocol))
}

/// True for protocols Istio treats as HTTP.
pub fn is_http_protocol(protocol: &str) -> bool {
    ["http", "http2", "grpc", "grpc-web", "http_proxy"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(protocol))
}

/// True for protocols Istio treats as TLS.
pub fn is_tls_protocol(protocol: &str) -> bool {
    ["https", "tls"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(protocol))
}

/// The gRPC status names fault injection may use (`grpc.SupportedGRPCStatus`).
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `retryOn` words Envoy understands (`supportedRetryOnPolicies`).
pub const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// True for HTTP status codes with a standard name (Go's `http.StatusText`), which is
/// what Istio accepts as a numeric `retryOn` entry.
pub fn is_known_http_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426
        | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511)
}

/// The methods CORS `allowMethods` may name.
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_istio_grammar() {
        assert!(is_dns1123_label("http"));
        assert!(is_dns1123_label("V1"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a_b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_wildcard_dns1123_label("*"));
        assert!(is_wildcard_dns1123_label("*x"));
        assert!(is_wildcard_dns1123_label("*-x"));
        assert!(!is_wildcard_dns1123_label("x*"));
    }

    #[test]
    fn domains() {
        assert!(check_wildcard_domain("*.example.com").is_ok());
        assert!(check_wildcard_domain("reviews").is_ok());
        assert!(check_wildcard_domain("*x").is_ok());
        assert!(check_wildcard_domain("foo.*.com").is_err());
        assert!(check_wildcard_domain("").is_err());
        assert!(check_fqdn("istio.io.").is_ok());
        assert!(check_fqdn("*.example.com").is_err());
        assert!(check_fqdn("1.2.3.4").is_err(), "all-numeric TLD");
        assert!(check_partial_wildcard("*x").is_err());
        assert!(check_partial_wildcard("*.x").is_ok());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("topology.istio.io/subzone").is_ok());
        assert!(check_label_key("a b").is_err());
        assert!(check_label_key("/x").is_err());
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_x"));
        assert!(!is_label_value("*"));
    }

    #[test]
    fn addresses() {
        assert!(check_ip_subnet("1.2.3.4").is_ok());
        assert!(check_ip_subnet("001:db8::").is_ok());
        assert!(check_ip_subnet("192.192.192.192/24").is_ok());
        assert!(check_ip_subnet("1.2.3.4/99").is_err());
        assert!(check_ip_subnet("example.com").is_err());
    }

    #[test]
    fn regexes_are_checked_like_re2() {
        assert!(check_regex("^(.*?;)?(user=dev-123)(;.*)?").is_ok());
        let err = check_regex("(unclosed").unwrap_err();
        assert!(err.contains("RE2"), "{err}");
        assert!(check_regex("(?=lookahead)").is_err());
        assert!(check_regex(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn host_relations() {
        assert!(hosts_overlap("*.foo.com", "*.com"));
        assert!(hosts_overlap("a.foo.com", "*.foo.com"));
        assert!(!hosts_overlap("a.com", "b.com"));
        assert!(host_is_subset("a.foo.com", "*.foo.com"));
        assert!(!host_is_subset("*.foo.com", "a.foo.com"));
    }
}
