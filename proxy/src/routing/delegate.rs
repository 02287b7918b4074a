//! VirtualService delegation: a root VirtualService's route with a `delegate` stands for
//! the routes of the delegate VirtualService (one with no hosts), each merged with it as
//! istiod merges them. A delegate route's matches must each narrow one of the root
//! route's (a prefix under the root's prefix, an exact path under it, the same exact
//! path; headers, query parameters, port and the rest not set otherwise); one that
//! narrows none is left out, as in Istio. What the delegate route leaves unset (rewrite,
//! timeout, retries, fault, mirrors, CORS, header changes) it takes from the root's.
//! Only one level: a delegate's own delegating routes are left out.

use std::collections::BTreeMap;

use fulcrum_policy::istio::{HttpMatchRequest, HttpRoute, StringMatch, StringMatchKind};

/// One route of a root VirtualService once its delegations are resolved, with the
/// namespace its short host names are read in (the delegate's, for a delegated route).
pub struct Resolved<'a> {
    pub route: HttpRoute,
    pub namespace: &'a str,
    /// Where it comes from, for errors: the root's field, and the delegate's when
    /// delegated.
    pub field: String,
}

/// The routes of a root VirtualService (`http`, in `namespace`), each delegating route
/// replaced by the routes `delegate(namespace, name)` finds, merged with it.
pub fn resolve<'a>(
    http: &[HttpRoute],
    namespace: &'a str,
    delegate: impl Fn(&str, &str) -> Option<(&'a str, &'a [HttpRoute])>,
) -> Vec<Resolved<'a>> {
    let mut out = Vec::new();
    for (i, root) in http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let Some(to) = &root.delegate else {
            out.push(Resolved {
                route: root.clone(),
                namespace,
                field,
            });
            continue;
        };
        let in_namespace = if to.namespace.is_empty() {
            namespace
        } else {
            to.namespace.as_str()
        };
        let Some((delegate_namespace, routes)) = delegate(in_namespace, &to.name) else {
            tracing::warn!(
                "{field}: delegate VirtualService {in_namespace}/{} not found",
                to.name
            );
            continue;
        };
        for (j, sub) in routes.iter().enumerate() {
            if sub.delegate.is_some() {
                continue;
            }
            match merge_route(root, sub) {
                Some(route) => out.push(Resolved {
                    route,
                    namespace: delegate_namespace,
                    field: format!(
                        "{field} (delegate {delegate_namespace}/{} spec.http[{j}])",
                        to.name
                    ),
                }),
                None => tracing::warn!(
                    "{field}: delegate {in_namespace}/{} spec.http[{j}] matches outside it; left out",
                    to.name
                ),
            }
        }
    }
    out
}

/// `sub` merged with the `root` route that delegates to it; none when its matches
/// conflict with the root's.
fn merge_route(root: &HttpRoute, sub: &HttpRoute) -> Option<HttpRoute> {
    let mut merged = sub.clone();
    merged.matches = merge_matches(&root.matches, &sub.matches)?;
    merged.name = match (root.name.is_empty(), sub.name.is_empty()) {
        (_, true) => root.name.clone(),
        (true, false) => sub.name.clone(),
        (false, false) => format!("{}-{}", root.name, sub.name),
    };
    inherit(&mut merged.rewrite, &root.rewrite);
    inherit(&mut merged.direct_response, &root.direct_response);
    inherit(&mut merged.timeout, &root.timeout);
    inherit(&mut merged.retries, &root.retries);
    inherit(&mut merged.fault, &root.fault);
    inherit(&mut merged.mirror, &root.mirror);
    inherit(&mut merged.mirror_percent, &root.mirror_percent);
    inherit(&mut merged.mirror_percentage, &root.mirror_percentage);
    inherit(&mut merged.cors_policy, &root.cors_policy);
    inherit(&mut merged.headers, &root.headers);
    if merged.mirrors.is_empty() {
        merged.mirrors.clone_from(&root.mirrors);
    }
    Some(merged)
}

/// `mine` when set, else `roots`.
fn inherit<T: Clone>(mine: &mut Option<T>, roots: &Option<T>) {
    if mine.is_none() {
        mine.clone_from(roots);
    }
}

/// Every match of `sub` combined with each match of `root` it narrows; none when one of
/// `sub`'s narrows none of them.
fn merge_matches(
    root: &[HttpMatchRequest],
    sub: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(sub.to_vec());
    }
    if sub.is_empty() {
        return Some(root.to_vec());
    }
    let mut merged = Vec::new();
    for leaf in sub {
        let narrowed: Vec<_> = (root.iter().filter(|r| !conflicts(r, leaf)))
            .map(|r| merge_match(r, leaf))
            .collect();
        if narrowed.is_empty() {
            return None;
        }
        merged.extend(narrowed);
    }
    Some(merged)
}

/// `leaf` with what it leaves unset taken from `root`.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = match (root.name.is_empty(), leaf.name.is_empty()) {
        (_, true) => root.name.clone(),
        (true, false) => leaf.name.clone(),
        (false, false) => format!("{}-{}", root.name, leaf.name),
    };
    for (mine, roots) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if mine.is_none() {
            mine.clone_from(roots);
        }
    }
    let union = |roots: &BTreeMap<String, StringMatch>, mine: &BTreeMap<String, StringMatch>| {
        let mut all = roots.clone();
        all.extend(mine.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    };
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    if out.port == 0 {
        out.port = root.port;
    }
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    if out.source_namespace.is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Whether `leaf` asks for something `root` does not cover.
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let strings = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if strings
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    let map_conflict =
        |(roots, leaves): &(
            &BTreeMap<String, StringMatch>,
            &BTreeMap<String, StringMatch>,
        )| { (leaves.iter()).any(|(key, l)| string_conflict(roots.get(key), Some(l))) };
    if maps.iter().any(map_conflict) {
        return true;
    }
    let labels_conflict =
        (leaf.source_labels.iter()).any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v));
    let gateways_conflict = !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && !leaf.gateways.iter().all(|g| root.gateways.contains(g));
    root.ignore_uri_case != leaf.ignore_uri_case
        || (root.port > 0 && leaf.port > 0 && root.port != leaf.port)
        || (!root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace)
        || labels_conflict
        || gateways_conflict
}

/// Whether `leaf` matches strings `root` does not: a regex on either side goes only
/// with nothing on the other; under an exact root, only the same exact string; under a
/// prefix root, a longer prefix or an exact string it starts.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root.and_then(|r| r.kind()), leaf.and_then(|l| l.kind()))
    else {
        return false;
    };
    use StringMatchKind::{Exact, Prefix, Regex};
    match (root, leaf) {
        (Regex(_), _) | (_, Regex(_)) => true,
        (Exact(r), Exact(l)) => r != l,
        (Exact(_), Prefix(_)) => true,
        (Prefix(r), Prefix(l) | Exact(l)) => !l.starts_with(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(yaml: &str) -> Vec<HttpRoute> {
        serde_json::from_value(serde_json::from_str::<serde_json::Value>(yaml).expect("json"))
            .expect("routes")
    }

    #[test]
    fn a_delegate_route_narrows_the_root_and_takes_what_it_leaves_unset() {
        let root = routes(
            r#"[{"name": "shop", "match": [{"uri": {"prefix": "/shop"}}],
                 "timeout": "3s", "delegate": {"name": "shop-routes"}},
                {"route": [{"destination": {"host": "fallback"}}]}]"#,
        );
        let delegate = routes(
            r#"[{"name": "cart", "match": [{"uri": {"prefix": "/shop/cart"}, "headers": {"x-user": {"exact": "a"}}}],
                 "route": [{"destination": {"host": "cart"}}], "timeout": "1s"},
                {"match": [{"uri": {"prefix": "/other"}}], "route": [{"destination": {"host": "other"}}]},
                {"route": [{"destination": {"host": "catalog"}}]}]"#,
        );
        let resolved = resolve(&root, "root-ns", |namespace, name| {
            assert_eq!((namespace, name), ("root-ns", "shop-routes"));
            Some(("team-ns", &delegate[..]))
        });
        let summary: Vec<(String, &str, Option<String>)> = resolved
            .iter()
            .map(|r| {
                let uri = (r.route.matches.first()).and_then(|m| m.uri.as_ref()?.prefix.clone());
                (r.route.name.clone(), r.namespace, uri)
            })
            .collect();
        // `/other` is not under `/shop`: left out. The last delegate route matches
        // anything, so it takes the root's match.
        assert_eq!(
            summary,
            [
                ("shop-cart".into(), "team-ns", Some("/shop/cart".into())),
                ("shop".into(), "team-ns", Some("/shop".into())),
                (String::new(), "root-ns", None),
            ]
        );
        let cart = &resolved[0].route;
        assert_eq!(
            cart.matches[0].headers["x-user"].exact.as_deref(),
            Some("a")
        );
        assert_eq!(
            cart.timeout.map(|t| t.to_std()),
            Some(Some(std::time::Duration::from_secs(1)))
        );
        assert_eq!(
            resolved[1].route.timeout.map(|t| t.to_std()),
            Some(Some(std::time::Duration::from_secs(3))),
            "the root's timeout"
        );
        assert!(resolved.iter().all(|r| r.route.delegate.is_none()));
    }

    #[test]
    fn matches_that_leave_the_roots_are_conflicts() {
        let m = |json: &str| -> HttpMatchRequest { serde_json::from_str(json).expect("match") };
        let root = m(r#"{"uri": {"prefix": "/a"}, "port": 80}"#);
        for (leaf, conflict) in [
            (r#"{"uri": {"prefix": "/a/b"}}"#, false),
            (r#"{"uri": {"exact": "/a/c"}}"#, false),
            (r#"{"uri": {"prefix": "/b"}}"#, true),
            (r#"{"uri": {"regex": "/a.*"}}"#, true),
            (r#"{"port": 8080}"#, true),
            (r#"{"ignoreUriCase": true}"#, true),
            (r#"{"method": {"exact": "GET"}}"#, false),
        ] {
            assert_eq!(conflicts(&root, &m(leaf)), conflict, "{leaf}");
        }
        let exact = m(r#"{"uri": {"exact": "/a"}}"#);
        assert!(conflicts(&exact, &m(r#"{"uri": {"prefix": "/a"}}"#)));
        assert!(!conflicts(&exact, &m(r#"{"uri": {"exact": "/a"}}"#)));
    }
}
