//! gRPC requests as the proxy treats them, as Envoy does:
//! - an answer the proxy makes itself (a refusal, a timeout, no endpoint, an injected
//!   fault) goes to a gRPC client as a gRPC answer, HTTP 200 with `grpc-status` and
//!   `grpc-message` and no body (a "trailers-only" answer), rather than as an HTTP error
//!   a gRPC client can only guess a code from; answers from endpoints pass as they came;
//! - a gRPC answer counts, for outlier detection and in the reports, as the HTTP status
//!   its `grpc-status` maps to ([`outcome_status`]): an endpoint failing every call with
//!   UNAVAILABLE answers HTTP 200, and is failing all the same;
//! - a call's `grpc-timeout` is its route timeout, capped by the route's own when it has
//!   one ([`call_timeout`]), and the endpoint is told the timeout that holds: Istio gives
//!   every route `maxGrpcTimeout` (its timeout, 0 for none), which has Envoy honour the
//!   header so.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::outbound::{ProxyResponse, REASON_HEADER};
use crate::transport::Trailers;

/// The gRPC status code an answer the proxy makes must carry to a gRPC client, when it is
/// not the one its HTTP status maps to (a fault's `grpcStatus`). In the answer's
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub u8);

/// Whether a request with `headers` is a gRPC call: its content type is
/// `application/grpc`, alone or with a `+` subtype or parameters (not gRPC-Web, which
/// is answered as HTTP).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+') | Some(b';')))
}

/// The field a gRPC answer's status code comes in: in its trailers, or in its head for an
/// answer with no message. A name made once: a `&str` would be parsed at every lookup.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The field a gRPC client gives its call's deadline in, as a timeout.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The timeout a gRPC call's `grpc-timeout` field gives (gRPC over HTTP/2: at most eight
/// digits and a unit, `H` `M` `S` `m` `u` `n`); `None` when it has none, or one that is
/// malformed (ignored, as Envoy ignores it).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A gRPC call's timeout, as Envoy reckons it under Istio's routes: the one its client
/// asked for (`asked`), capped by the `route`'s; the route's when the client asked for
/// none (or for 0, which asks for none).
pub fn call_timeout(route: Option<Duration>, asked: Option<Duration>) -> Option<Duration> {
    match (route, asked.filter(|t| !t.is_zero())) {
        (Some(route), Some(asked)) => Some(route.min(asked)),
        (route, asked) => route.or(asked),
    }
}

/// `timeout` as a `grpc-timeout` value: in milliseconds (rounded up, so that a timeout
/// under one is not told as none), in seconds past what eight digits of them hold.
pub fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    let text = match millis {
        0..=99_999_999 => format!("{millis}m"),
        _ => format!("{}S", timeout.as_secs().min(99_999_999)),
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// The gRPC status for an HTTP status, as gRPC maps them (and Envoy with it).
pub fn code_for_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// The HTTP status a gRPC status code stands for (Envoy's `grpcToHttpStatus`), for the
/// codes gRPC defines; 500 for any other.
pub fn http_for_code(code: &[u8]) -> u16 {
    match code {
        b"0" => 200,
        b"1" => 499,                // CANCELLED: the client went away
        b"3" | b"9" | b"11" => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        b"4" => 504,                // DEADLINE_EXCEEDED
        b"5" => 404,                // NOT_FOUND
        b"6" | b"10" => 409,        // ALREADY_EXISTS, ABORTED
        b"7" => 403,                // PERMISSION_DENIED
        b"8" => 429,                // RESOURCE_EXHAUSTED
        b"12" => 501,               // UNIMPLEMENTED
        b"14" => 503,               // UNAVAILABLE
        b"16" => 401,               // UNAUTHENTICATED
        _ => 500,                   // UNKNOWN, INTERNAL, DATA_LOSS, others
    }
}

/// The status an endpoint's (or a peer's) answer counts as: its HTTP status, or for a
/// gRPC answer the one its `grpc-status` (in its head, or in its trailers) maps to.
pub fn outcome_status<B>(response: &Response<B>) -> u16 {
    let grpc_status = response.headers().get(GRPC_STATUS).or_else(|| {
        let trailers = response.extensions().get::<Trailers>()?;
        trailers.0.get(GRPC_STATUS)
    });
    match grpc_status {
        Some(code) if response.status() == StatusCode::OK => http_for_code(code.as_bytes()),
        _ => response.status().as_u16(),
    }
}

/// `response` for a gRPC client: an answer the proxy made (it names its reason) becomes a
/// trailers-only gRPC answer; any other is returned as it is.
pub fn for_grpc_client(mut response: ProxyResponse) -> ProxyResponse {
    let Some(reason) = response.headers().get(REASON_HEADER).cloned() else {
        return response;
    };
    let code = match response.extensions().get::<GrpcCode>() {
        Some(GrpcCode(code)) => *code,
        None => code_for_http(response.status()),
    };
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = Default::default();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(message) = HeaderValue::from_str(&percent_encoded(reason.as_bytes())) {
        headers.insert("grpc-message", message);
    }
    response
}

/// `text` as `grpc-message` carries it: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encoded(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::answer;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    #[test]
    fn a_calls_grpc_timeout_is_its_timeout_capped_by_the_routes() {
        let timeout = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, HeaderValue::from_str(value).unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        // Malformed: no unit, an unknown one, no digits, nine digits, a sign, spaces.
        for bad in ["100", "5s", "m", "123456789m", "-5m", " 5m", "5 m", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);

        let (s, ms) = (Duration::from_secs, Duration::from_millis);
        assert_eq!(call_timeout(None, None), None);
        assert_eq!(call_timeout(Some(s(5)), None), Some(s(5)));
        assert_eq!(call_timeout(None, Some(ms(300))), Some(ms(300)));
        assert_eq!(call_timeout(Some(s(5)), Some(ms(300))), Some(ms(300)));
        assert_eq!(call_timeout(Some(ms(200)), Some(s(9))), Some(ms(200)));
        // A timeout of 0 asks for none.
        assert_eq!(call_timeout(None, Some(s(0))), None);
        assert_eq!(call_timeout(Some(s(5)), Some(s(0))), Some(s(5)));

        assert_eq!(grpc_timeout_value(ms(300)), "300m");
        assert_eq!(grpc_timeout_value(Duration::from_micros(1)), "1m");
        assert_eq!(grpc_timeout_value(s(86_400 * 365 * 10)), "99999999S");
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let with = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpcx"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_refusal_becomes_a_trailers_only_grpc_answer() {
        let grpc = for_grpc_client(answer(
            StatusCode::GATEWAY_TIMEOUT,
            "route timeout 100ms, 100% spent",
        ));
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(
            grpc.headers()["grpc-message"],
            "route timeout 100ms, 100%25 spent"
        );
        let body = grpc.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
        // A fault's own code wins over the HTTP status's.
        let mut fault = answer(StatusCode::SERVICE_UNAVAILABLE, "fault injected by route");
        fault.extensions_mut().insert(GrpcCode(5));
        assert_eq!(for_grpc_client(fault).headers()["grpc-status"], "5");
        for (http, code) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (500, 2),
        ] {
            let status = StatusCode::from_u16(http).unwrap();
            assert_eq!(code_for_http(status), code, "{http}");
        }
    }

    #[test]
    fn a_grpc_answer_counts_as_the_http_status_its_code_maps_to() {
        let answer = |head: Option<&'static str>, trailer: Option<&'static str>| {
            let mut r = Response::new(Bytes::new());
            if let Some(code) = head {
                r.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(code));
            }
            if let Some(code) = trailer {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static(code));
                r.extensions_mut().insert(Trailers(t));
            }
            r
        };
        assert_eq!(outcome_status(&answer(None, None)), 200);
        assert_eq!(outcome_status(&answer(None, Some("0"))), 200);
        assert_eq!(outcome_status(&answer(None, Some("14"))), 503);
        assert_eq!(outcome_status(&answer(Some("4"), None)), 504);
        assert_eq!(outcome_status(&answer(Some("13"), None)), 500);
        assert_eq!(outcome_status(&answer(Some("99"), None)), 500);
        // An HTTP error is counted as itself.
        let mut refused = answer(Some("14"), None);
        *refused.status_mut() = StatusCode::BAD_GATEWAY;
        assert_eq!(outcome_status(&refused), 502);
        for (code, http) in [("1", 499), ("3", 400), ("5", 404), ("7", 403), ("8", 429)] {
            assert_eq!(http_for_code(code.as_bytes()), http, "{code}");
        }
        for (code, http) in [("10", 409), ("12", 501), ("16", 401), ("15", 500)] {
            assert_eq!(http_for_code(code.as_bytes()), http, "{code}");
        }
    }

    #[test]
    fn an_endpoints_answer_passes_as_it_came() {
        let mut endpoint = ProxyResponse::default();
        *endpoint.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let passed = for_grpc_client(endpoint);
        assert_eq!(passed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(passed.headers().get("grpc-status").is_none());
    }
}
