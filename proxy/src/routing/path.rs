//! A request's path as routing sees it: normalized as RFC 3986 §5.2.4 says, the dot
//! segments (`.`, `..`, also written `%2E`) taken out, before any route matches it and
//! for the endpoint too. Istio's default path normalization (`BASE`) has Envoy do this
//! (`normalize_path`), so that `/public/../admin` is routed, and sent, as `/admin`, and
//! a route on `/public` is no way around another. Repeated slashes are kept, as under
//! `BASE`; the query is left as it is.

use std::borrow::Cow;

/// `path_and_query` with the dot segments of its path taken out; borrowed when it has
/// none, as nearly every request's path.
pub fn normalized(path_and_query: &str) -> Cow<'_, str> {
    if !may_have_dot_segments(path_and_query) {
        return Cow::Borrowed(path_and_query);
    }
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        return Cow::Borrowed(path_and_query);
    }
    let mut kept: Vec<&str> = Vec::new();
    // A dot segment last leaves the path ending in a slash: `/a/b/..` is `/a/`.
    let mut ends_in_slash = false;
    for segment in path[1..].split('/') {
        match dots(segment) {
            Some(1) => ends_in_slash = true,
            Some(_) => {
                kept.pop();
                ends_in_slash = true;
            }
            None => {
                kept.push(segment);
                ends_in_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path_and_query.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || ends_in_slash {
        out.push('/');
    }
    out.push_str(query);
    Cow::Owned(out)
}

/// How many dots a dot segment is (1 or 2), a dot written as itself or as `%2E`; none for
/// any other segment.
fn dots(segment: &str) -> Option<usize> {
    let mut rest = segment.as_bytes();
    let mut count = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return None;
        }
        count += 1;
    }
    (1..=2).contains(&count).then_some(count)
}

/// Whether the path of `path_and_query` has a segment starting with a dot, or a
/// percent sign (which may write one): one look at each byte up to the query, as every
/// request's path is looked at.
fn may_have_dot_segments(path_and_query: &str) -> bool {
    let mut after_slash = false;
    for &b in path_and_query.as_bytes() {
        match b {
            b'?' => return false,
            b'%' => return true,
            b'.' if after_slash => return true,
            _ => {}
        }
        after_slash = b == b'/';
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_taken_out_as_rfc_3986_says() {
        for (given, expected) in [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/public/../admin", "/admin"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a//b/../c", "/a//c"),
            ("/a/b/", "/a/b/"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a/.../b", "/a/.../b"),
            ("/a/.b/c", "/a/.b/c"),
            ("/a%2eb/c", "/a%2eb/c"),
            ("/x/../y?next=/../z", "/y?next=/../z"),
            ("/plain?q=/../", "/plain?q=/../"),
            ("*", "*"),
        ] {
            assert_eq!(normalized(given), expected, "{given}");
        }
    }

    #[test]
    fn a_path_without_dot_segments_is_not_copied() {
        assert!(matches!(normalized("/api/v1/items?x=1"), Cow::Borrowed(_)));
        assert!(
            matches!(normalized("/a/.b"), Cow::Owned(_)),
            "looked at, same"
        );
    }
}
