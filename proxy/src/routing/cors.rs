//! A route's `corsPolicy`, as Envoy's CORS filter applies the policy Istio gives it.
//!
//! A request is a CORS request when it carries a non-empty `Origin`. A preflight (an
//! `OPTIONS` with a non-empty `Access-Control-Request-Method`) whose origin is allowed is
//! answered by the proxy, 200 with the policy's fields; one whose origin is not allowed
//! is forwarded (`unmatchedPreflights: FORWARD`, the default) or answered 200 without
//! CORS fields (`IGNORE`). Any other CORS request is forwarded, and its answer gets
//! `Access-Control-Allow-Origin` (the request's origin), `-Allow-Credentials` and
//! `-Expose-Headers` when its origin is allowed. An origin is allowed when one of the
//! `allowOrigins` matches it or matches `*` (so `exact: "*"` allows every origin);
//! the deprecated `allowOrigin` strings count as exact matches.
//!
//! Lists are joined with `,` and `maxAge` is given in whole seconds, as Istio passes them
//! to Envoy; `allowMethods: ["*"]` or `allowHeaders: ["*"]` echo what the preflight asks
//! for.

use fulcrum_policy::istio::{CorsPolicy, UnmatchedPreflights};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{Matcher, RouteError};

/// A compiled `corsPolicy`.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<Matcher>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    forward_unmatched_preflights: bool,
}

/// What the policy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOutcome {
    /// Not a CORS request, or one whose answer gets nothing: route it as usual.
    Pass,
    /// A preflight the proxy answers: 200 with these fields.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// Route it as usual, and set these fields on its answer.
    Answer(Vec<(HeaderName, HeaderValue)>),
}

impl Cors {
    /// Compiles `policy`; `field` (e.g. `spec.http[0].corsPolicy`) names it in errors.
    pub fn compile(policy: &CorsPolicy, field: &str) -> Result<Cors, RouteError> {
        let mut origins: Vec<Matcher> = policy
            .allow_origin
            .iter()
            .map(|o| Matcher::Exact(o.clone()))
            .collect();
        for (i, m) in policy.allow_origins.iter().enumerate() {
            // An entry that sets nothing allows no origin: istiod leaves it out.
            match Matcher::compile(m, &format!("{field}.allowOrigins[{i}]"))? {
                Matcher::Present => {}
                origin => origins.push(origin),
            }
        }
        let joined = |list: &[String], name: &str| -> Result<Option<HeaderValue>, RouteError> {
            if list.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&list.join(","))
                .map(Some)
                .map_err(|_| RouteError::new(format!("{field}.{name}"), "not a valid field value"))
        };
        let max_age = policy
            .max_age
            .and_then(|d| d.to_std())
            .map(|d| HeaderValue::from(d.as_secs()));
        Ok(Cors {
            origins,
            allow_methods: joined(&policy.allow_methods, "allowMethods")?,
            allow_headers: joined(&policy.allow_headers, "allowHeaders")?,
            expose_headers: joined(&policy.expose_headers, "exposeHeaders")?,
            max_age,
            allow_credentials: policy.allow_credentials == Some(true),
            forward_unmatched_preflights: policy.unmatched_preflights
                != Some(UnmatchedPreflights::Ignore),
        })
    }

    /// What the policy does with a request of `method` with `headers`.
    pub fn decide(&self, method: &Method, headers: &HeaderMap) -> CorsOutcome {
        let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsOutcome::Pass;
        };
        let allowed = origin
            .to_str()
            .is_ok_and(|text| (self.origins.iter()).any(|m| m.matches("*") || m.matches(text)));
        let requested_method = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let mut fields = Vec::new();
        if allowed {
            fields.push((ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        }
        if method == Method::OPTIONS
            && let Some(requested_method) = requested_method
        {
            if !allowed && self.forward_unmatched_preflights {
                return CorsOutcome::Pass;
            }
            if self.allow_credentials {
                fields.push((
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            let echo = |listed: &Option<HeaderValue>, asked: Option<&HeaderValue>| match listed {
                Some(v) if v == "*" => asked.cloned(),
                listed => listed.clone(),
            };
            if let Some(v) = echo(&self.allow_methods, Some(requested_method)) {
                fields.push((ACCESS_CONTROL_ALLOW_METHODS, v));
            }
            let asked_headers = headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
            if let Some(v) = echo(&self.allow_headers, asked_headers) {
                fields.push((ACCESS_CONTROL_ALLOW_HEADERS, v));
            }
            if let Some(v) = &self.max_age {
                fields.push((ACCESS_CONTROL_MAX_AGE, v.clone()));
            }
            return CorsOutcome::Preflight(fields);
        }
        if !allowed {
            return CorsOutcome::Pass;
        }
        if self.allow_credentials {
            fields.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(v) = &self.expose_headers {
            fields.push((ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
        CorsOutcome::Answer(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VirtualService route's `corsPolicy` of `fields` (YAML flow style), compiled.
    fn policy(fields: &str) -> Cors {
        let mut config = fulcrum_policy::ConfigSet::new();
        config.add_text(
            "vs.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                 metadata: {{name: shop, namespace: shop}}\n\
                 spec:\n  hosts: [shop.example]\n  http:\n  \
                 - corsPolicy: {{{fields}}}\n    route: [{{destination: {{host: shop.example}}}}]\n"
            ),
        );
        let problems: Vec<String> = config.diagnostics().map(|d| d.to_string()).collect();
        let policy = config
            .resources()
            .find_map(|r| match r {
                fulcrum_policy::Resource::VirtualService(vs) => vs.spec.http[0].cors_policy.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no corsPolicy: {problems:?}"));
        Cors::compile(&policy, "spec.http[0].corsPolicy").expect("compiles")
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn fields(outcome: &CorsOutcome) -> Vec<String> {
        let (CorsOutcome::Preflight(f) | CorsOutcome::Answer(f)) = outcome else {
            return Vec::new();
        };
        f.iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    const SHOP: &str = concat!(
        r#"allowOrigins: [{exact: "https://shop.example"}, {regex: "https://.*\\.shop\\.example"}], "#,
        "allowMethods: [GET, POST], allowHeaders: [x-token, content-type], ",
        "exposeHeaders: [x-trace], maxAge: 24h, allowCredentials: true"
    );

    #[test]
    fn an_allowed_preflight_is_answered_with_the_policy() {
        let cors = policy(SHOP);
        let outcome = cors.decide(
            &Method::OPTIONS,
            &request(&[
                ("origin", "https://eu.shop.example"),
                ("access-control-request-method", "POST"),
            ]),
        );
        assert!(matches!(outcome, CorsOutcome::Preflight(_)));
        assert_eq!(
            fields(&outcome),
            [
                "access-control-allow-origin: https://eu.shop.example",
                "access-control-allow-credentials: true",
                "access-control-allow-methods: GET,POST",
                "access-control-allow-headers: x-token,content-type",
                "access-control-max-age: 86400",
            ]
        );
    }

    #[test]
    fn an_allowed_request_gets_the_answer_fields_and_others_pass() {
        let cors = policy(SHOP);
        let get = |headers: &[(&str, &str)]| cors.decide(&Method::GET, &request(headers));
        assert_eq!(
            fields(&get(&[("origin", "https://shop.example")])),
            [
                "access-control-allow-origin: https://shop.example",
                "access-control-allow-credentials: true",
                "access-control-expose-headers: x-trace",
            ]
        );
        // Not a CORS request, an origin not allowed, a regex that must match whole.
        assert_eq!(get(&[]), CorsOutcome::Pass);
        assert_eq!(get(&[("origin", "")]), CorsOutcome::Pass);
        assert_eq!(
            get(&[("origin", "https://evil.example")]),
            CorsOutcome::Pass
        );
        assert_eq!(
            get(&[("origin", "https://a.shop.example.evil.example")]),
            CorsOutcome::Pass
        );
        // OPTIONS without a requested method is not a preflight.
        let options = cors.decide(
            &Method::OPTIONS,
            &request(&[("origin", "https://shop.example")]),
        );
        assert!(matches!(options, CorsOutcome::Answer(_)));
    }

    #[test]
    fn an_unmatched_preflight_is_forwarded_unless_the_policy_ignores_it() {
        let preflight = request(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "DELETE"),
        ]);
        assert_eq!(
            policy(SHOP).decide(&Method::OPTIONS, &preflight),
            CorsOutcome::Pass
        );
        let ignoring = policy(&format!("{SHOP}, unmatchedPreflights: IGNORE"));
        // Answered here, with no Allow-Origin: the browser refuses the real request.
        let outcome = ignoring.decide(&Method::OPTIONS, &preflight);
        assert!(matches!(outcome, CorsOutcome::Preflight(_)));
        assert!(!fields(&outcome).iter().any(|f| f.contains("allow-origin")));
    }

    #[test]
    fn a_star_origin_allows_all_and_star_lists_echo_the_preflight() {
        let cors = policy(r#"allowOrigin: ["*"], allowMethods: ["*"], allowHeaders: ["*"]"#);
        let outcome = cors.decide(
            &Method::OPTIONS,
            &request(&[
                ("origin", "https://anyone.example"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-a,x-b"),
            ]),
        );
        assert_eq!(
            fields(&outcome),
            [
                "access-control-allow-origin: https://anyone.example",
                "access-control-allow-methods: PATCH",
                "access-control-allow-headers: x-a,x-b",
            ]
        );
    }
}
