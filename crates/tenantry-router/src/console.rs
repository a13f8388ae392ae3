//! The operator console at `/admin/`: one HTML page, one stylesheet and one ES module,
//! embedded in the binary. The page holds no data and no secret; the module signs in
//! with an admin token kept in `sessionStorage` and reads the admin API with it as a
//! Bearer header. Every response carries a strict Content Security Policy: no inline
//! script or style, nothing from another origin, no framing, no form posts.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use crate::edge::resource;
use actix_web::http::header;
use actix_web::{web, HttpResponse};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin").route(web::get().to(to_index)));
    cfg.service(resource("/admin/").route(web::get().to(index)));
    cfg.service(resource("/admin/console.js").route(web::get().to(script)));
    cfg.service(resource("/admin/console.css").route(web::get().to(style)));
}

/// The policy of every console response. `img-src data:` is for the page's empty icon.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

const HTML: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The page, its asset links carrying a hash of the assets' content: an asset URL
/// never changes meaning, so browsers may keep it for good.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (SCRIPT, STYLE).hash(&mut h);
    HTML.replace("@VERSION@", &format!("{:016x}", h.finish()))
});

fn response(content_type: &str, cache: &str) -> actix_web::HttpResponseBuilder {
    let mut r = HttpResponse::Ok();
    r.content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(("cross-origin-opener-policy", "same-origin"))
        .insert_header((header::CACHE_CONTROL, cache));
    r
}

async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

/// The operator console (HTML). It asks for an admin token and keeps it for the
/// browser session only.
#[utoipa::path(get, path = "/admin/", tag = "admin",
    responses((status = 200, description = "the console's page", content_type = "text/html")))]
pub(crate) async fn index() -> HttpResponse {
    response("text/html; charset=utf-8", "no-cache").body(PAGE.as_str())
}

async fn script() -> HttpResponse {
    response(
        "text/javascript; charset=utf-8",
        "public, max-age=31536000, immutable",
    )
    .body(SCRIPT)
}

async fn style() -> HttpResponse {
    response(
        "text/css; charset=utf-8",
        "public, max-age=31536000, immutable",
    )
    .body(STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = PAGE.as_str();
        assert!(!page.contains("@VERSION@"));
        // Scripts only by src, styles only by link; no event-handler attributes.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains(r#"<script type="module" src="/admin/console.js?v="#));
        for inline in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
            assert!(!page.contains(inline), "the page has {inline}");
        }
    }

    #[test]
    fn the_script_never_writes_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        // The token lives in sessionStorage only.
        assert!(!SCRIPT.contains("localStorage"));
    }
}
