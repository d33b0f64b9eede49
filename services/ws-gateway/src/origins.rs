//! Which web pages may open a WebSocket (README, "WebSocket protocol"):
//! browsers send the page's `Origin` with every upgrade, and a page of
//! another site must not reach a user's chat through credentials the
//! browser attaches on its own. The gateway's own origin is always allowed,
//! `GATEWAY_ALLOWED_ORIGINS` lists the others (`*`: any), and clients that
//! send no `Origin` (apps, bots, the terminal client) are not browsers and
//! are not affected.

use parley_runtime::config::CorsOrigins;

/// Whether an upgrade with `origin` (its `Origin` header) made to `host`
/// (its `Host` header) may proceed.
pub(crate) fn allowed(origin: Option<&str>, host: Option<&str>, listed: &CorsOrigins) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let same_site = origin.split_once("://").is_some_and(|(_, authority)| {
        host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
    });
    same_site
        || match listed {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_origin_and_listed_ones_pass() {
        let none = CorsOrigins::None;
        assert!(
            allowed(None, Some("chat.example.com"), &none),
            "no Origin: not a browser"
        );
        assert!(allowed(
            Some("https://chat.example.com"),
            Some("chat.example.com"),
            &none
        ));
        assert!(allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            &none
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("chat.example.com"),
            &none
        ));
        assert!(!allowed(Some("null"), Some("chat.example.com"), &none));
        assert!(
            !allowed(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080"), &none),
            "another port is another origin"
        );

        let listed: CorsOrigins = "https://app.example.com".parse().unwrap();
        assert!(allowed(
            Some("https://app.example.com"),
            Some("chat.example.com"),
            &listed
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("chat.example.com"),
            &listed
        ));
        assert!(allowed(
            Some("https://evil.example"),
            None,
            &CorsOrigins::Any
        ));
    }
}
