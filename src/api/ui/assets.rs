//! The dashboard's files, compiled in: no CDN, no build step, works with no internet.

use crate::api::Reply;
use flotilla_shims::http::full;
use http::{HeaderValue, Method, StatusCode};

const INDEX: &[u8] = include_bytes!("files/index.html");
const SCRIPT: &[u8] = include_bytes!("files/app.js");
const STYLE: &[u8] = include_bytes!("files/style.css");
const ICON: &[u8] = include_bytes!("files/icon.svg");

/// Scripts only from this file set, no inline script or style, no other origin to talk
/// to, no framing: a key whose value is markup can only ever be text.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// `path` is what follows `/ui`. `None`: not a dashboard path.
pub fn serve(method: &Method, path: &str) -> Option<Reply> {
    let (body, kind) = match path {
        "" => return Some(redirect()),
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/icon.svg" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        let mut r = full(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let mut r = full(StatusCode::OK, body);
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary brings new files: always revalidate.
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

fn redirect() -> Reply {
    let mut r = full(StatusCode::MOVED_PERMANENTLY, Vec::new());
    r.headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_carries_the_policy_and_the_page_has_no_inline_script() {
        for p in ["/", "/app.js", "/style.css", "/icon.svg"] {
            let r = serve(&Method::GET, p).expect(p);
            assert_eq!(r.status(), StatusCode::OK, "{p}");
            assert_eq!(r.headers()[http::header::CONTENT_SECURITY_POLICY], CSP);
        }
        let page = std::str::from_utf8(INDEX).expect("utf-8");
        // Every <script> names a file; none has a body or an inline handler.
        assert!(page.contains(r#"<script src="app.js" defer></script>"#));
        assert_eq!(page.matches("<script").count(), 1);
        assert!(!page.contains(" onclick=") && !page.contains(" style="));
        assert_eq!(
            serve(&Method::GET, "").map(|r| r.status()),
            Some(StatusCode::MOVED_PERMANENTLY)
        );
        assert!(serve(&Method::GET, "/nothing").is_none());
        let put = serve(&Method::PUT, "/app.js").expect("known file");
        assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_script_never_writes_markup_from_data() {
        let js = std::str::from_utf8(SCRIPT).expect("utf-8");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "app.js uses {sink}");
        }
    }
}
