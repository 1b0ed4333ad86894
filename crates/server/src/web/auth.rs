//! Who is looking at the web view, with security on.
//!
//! The web view is served over TLS on its own port (`--web-listen`), with
//! the gRPC port's certificate, trust bundle, CRLs and tokens file. A reader
//! identity comes from:
//!
//! - a token, entered once on `/login` and then kept by the browser in a
//!   cookie that scripts cannot read (`HttpOnly`), that travels over TLS
//!   only (`Secure`) and never with a request another site starts
//!   (`SameSite=Strict`); the cookie holds the token itself, so that the
//!   tokens file in force decides every request: a token removed, expired or
//!   given another role stops working at once, as it does over gRPC;
//! - or a client certificate presented in the TLS handshake, checked again
//!   against the trust bundle and CRLs in force on every request.
//!
//! A token wins over a certificate, as over gRPC. The identity must be
//! admitted to the fleet's reads by the access table (the row of
//! `FleetService/ListAgents`: readers, orchestrators, admins). An open live
//! stream checks its credential every second and ends when it no longer
//! holds; the page then reloads, and lands on the sign-in form.
//!
//! Forms that change something (sign in, sign out) carry a CSRF token: a
//! random value in a cookie of its own and in the form, which must be equal,
//! and a browser's `Origin`, when sent, must be this server's. Sign-ins,
//! failed ones and refused identities are written to the audit log.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::Extensions;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use fleet_health_auth::policy::{self, Decision};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::metrics::Denial;
use crate::net::ConnInfo;
use crate::security::{AuditEvent, Caller, Security};

use super::views::{LoginPage, Viewer};
use super::{Gate, Web, html};

/// The cookie that keeps a signed-in token.
pub(super) const TOKEN_COOKIE: &str = "fleet_health_token";
/// The cookie that holds the CSRF value the forms repeat.
const CSRF_COOKIE: &str = "fleet_health_csrf";
/// The gRPC call whose row in the access table admits readers of the view.
const READ: &str = "/fleethealth.v1.FleetService/ListAgents";
/// The longest a sign-in cookie is kept (a token that expires sooner ends
/// it sooner).
const KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// How the audit log names the web view's sign-ins and refusals.
const RPC: &str = "web";

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn set_cookie(c: &Cookie<'_>) -> (header::HeaderName, HeaderValue) {
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&c.to_string()).unwrap_or(HeaderValue::from_static("")),
    )
}

fn new_csrf() -> String {
    let mut bytes = [0u8; 16];
    // The system's random source fails only on a broken system; a zero
    // value then still differs from any cookie a browser holds elsewhere.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn csrf_cookie(value: String) -> Cookie<'static> {
    Cookie::build((CSRF_COOKIE, value))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .build()
}

/// Where to go after signing in: a path on this server only.
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// The connection a request came on, as the server's listeners give it.
fn connection(extensions: &axum::http::Extensions) -> Option<ConnInfo> {
    extensions
        .get::<ConnectInfo<ConnInfo>>()
        .map(|ConnectInfo(c)| c.clone())
}

/// Who a request comes from: the token in its cookie, else the client
/// certificate of its connection.
fn identify(
    security: &Security,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<Option<Caller>, String> {
    if let Some(token) = cookie(headers, TOKEN_COOKIE).filter(|t| !t.is_empty()) {
        return security
            .identify(Some(format!("Bearer {token}").as_bytes()), Some(conn))
            .map_err(|r| r.status.message().to_owned());
    }
    let Some(caller) = security
        .identify(None, Some(conn))
        .map_err(|r| r.status.message().to_owned())?
    else {
        return Ok(None);
    };
    security.still_valid(&caller.credential, &caller.identity)?;
    Ok(Some(caller))
}

/// Whether `caller` may read the fleet, audited and counted when not.
fn admit(security: &Security, caller: &Caller) -> Result<(), String> {
    match policy::decide(READ, Some(&caller.identity)) {
        Decision::Allow => Ok(()),
        Decision::Deny(denied) => {
            let message = format!("{denied}; the web view needs a reader");
            security.metrics().count_denial(Denial::Role);
            security.audit().record(AuditEvent {
                event: "denied",
                identity: Some(caller.identity.to_string()),
                credential: Some(caller.credential.kind()),
                peer: caller.peer,
                rpc: Some(RPC),
                agent_id: None,
                result: "permission_denied",
                reason: Some(Denial::Role.as_str()),
                detail: Some(message.clone()),
            });
            Err(message)
        }
    }
}

/// Whether the request is a page a person navigates to (sent to the sign-in
/// form when signed out) rather than one a script asks for (told 401).
fn navigation(req: &Request) -> bool {
    req.uri().path() != "/events" && !req.uri().query().is_some_and(|q| q.contains("part=main"))
}

/// Headers every page of the view carries: no framing by other sites, no
/// caching of what a signed-in reader saw, no referrer to other sites.
fn harden(response: &mut Response, tls: bool) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
}

/// The gate in front of every page and stream of the view: lets the
/// request through with a [`Viewer`] (and the [`Caller`], with security on)
/// in its extensions, or answers it.
pub(super) async fn gate(State(web): State<Web>, mut req: Request, next: Next) -> Response {
    let security = match &web.gate {
        Gate::Open => {
            req.extensions_mut().insert(Viewer::open());
            let mut response = next.run(req).await;
            harden(&mut response, false);
            return response;
        }
        Gate::Elsewhere(message) => {
            return (StatusCode::FORBIDDEN, format!("{message}\n")).into_response();
        }
        Gate::Signed(security) => security.clone(),
    };
    let Some(conn) = connection(req.extensions()) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no connection information\n",
        )
            .into_response();
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let sign_in = |why: Option<String>| -> Response {
        if navigation(&req) {
            let mut pairs = vec![("next", path_and_query.clone())];
            if let Some(why) = why {
                pairs.push(("why", why));
            }
            let to = format!(
                "/login?{}",
                serde_urlencoded::to_string(&pairs).unwrap_or_default()
            );
            let mut response = Redirect::to(&to).into_response();
            if cookie(req.headers(), TOKEN_COOKIE).is_some() {
                let gone = Cookie::build((TOKEN_COOKIE, ""))
                    .path("/")
                    .max_age(cookie::time::Duration::ZERO)
                    .build();
                let (k, v) = set_cookie(&gone);
                response.headers_mut().append(k, v);
            }
            response
        } else {
            (StatusCode::UNAUTHORIZED, "sign in again\n").into_response()
        }
    };
    let caller = match identify(&security, req.headers(), &conn) {
        Ok(Some(caller)) => caller,
        Ok(None) => return sign_in(None),
        Err(why) => return sign_in(Some(why)),
    };
    if let Err(why) = admit(&security, &caller) {
        let mut response = (StatusCode::FORBIDDEN, html(&LoginPage::refused(&why))).into_response();
        harden(&mut response, true);
        return response;
    }
    let by_token = matches!(caller.credential, crate::security::Credential::Token { .. });
    let (csrf, fresh) = match cookie(req.headers(), CSRF_COOKIE) {
        Some(c) if c.len() == 32 => (c, false),
        _ => (new_csrf(), true),
    };
    req.extensions_mut().insert(Viewer {
        who: Some(caller.identity.to_string()),
        by: Some(caller.credential.kind()),
        csrf: csrf.clone(),
        sign_out: by_token,
    });
    req.extensions_mut().insert(caller);
    let mut response = next.run(req).await;
    if fresh {
        let (k, v) = set_cookie(&csrf_cookie(csrf));
        response.headers_mut().append(k, v);
    }
    harden(&mut response, true);
    response
}

/// The query of the sign-in form.
#[derive(Deserialize, Default)]
pub(super) struct LoginQuery {
    next: Option<String>,
    why: Option<String>,
}

/// The sign-in form.
pub(super) async fn login_form(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if !matches!(web.gate, Gate::Signed(_)) {
        return Redirect::to("/").into_response();
    }
    let (csrf, fresh) = match cookie(&headers, CSRF_COOKIE) {
        Some(c) if c.len() == 32 => (c, false),
        _ => (new_csrf(), true),
    };
    let page = LoginPage::form(local(q.next.as_deref()), csrf.clone(), q.why);
    let mut response = html(&page);
    if fresh {
        let (k, v) = set_cookie(&csrf_cookie(csrf));
        response.headers_mut().append(k, v);
    }
    harden(&mut response, true);
    response
}

/// What the sign-in form sends.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

/// Whether a form post carries this browser's CSRF value and, when the
/// browser says where it comes from, comes from this server.
fn csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    let Some(kept) = cookie(headers, CSRF_COOKIE) else {
        return false;
    };
    if kept.len() != 32 || !bool::from(kept.as_bytes().ct_eq(sent.as_bytes())) {
        return false;
    }
    match (
        headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .is_some_and(|o| o == host),
        // HTTP/2 carries the host as :authority, which hyper puts in the
        // URI, not in a Host header; the CSRF value alone decides then.
        (Some(_), None) => true,
    }
}

/// Signs in with a token: checks it against the tokens file and the access
/// table, then keeps it in the browser's cookie.
pub(super) async fn login(
    State(web): State<Web>,
    conn: Extensions,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let (Gate::Signed(security), Some(conn)) = (&web.gate, connection(&conn)) else {
        return Redirect::to("/").into_response();
    };
    let next = local(form.next.as_deref());
    let again = |status: StatusCode, why: String| {
        let csrf = cookie(&headers, CSRF_COOKIE)
            .filter(|c| c.len() == 32)
            .unwrap_or_else(new_csrf);
        let mut response = (
            status,
            html(&LoginPage::form(next.clone(), csrf.clone(), Some(why))),
        )
            .into_response();
        let (k, v) = set_cookie(&csrf_cookie(csrf));
        response.headers_mut().append(k, v);
        harden(&mut response, true);
        response
    };
    if !csrf_ok(&headers, &form.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            "the form had expired or came from another site; sign in again here".into(),
        );
    }
    let token = form.token.trim();
    let caller = match security.identify(Some(format!("Bearer {token}").as_bytes()), Some(&conn)) {
        Ok(Some(caller)) => caller,
        Ok(None) => return again(StatusCode::UNAUTHORIZED, "no token given".into()),
        Err(refusal) => {
            security.metrics().count_denial(refusal.denial);
            security.audit().record(AuditEvent {
                event: "denied",
                identity: refusal.identity.clone(),
                credential: Some("token"),
                peer: Some(conn.remote),
                rpc: Some(RPC),
                agent_id: None,
                result: "unauthenticated",
                reason: Some(refusal.denial.as_str()),
                detail: Some(refusal.status.message().to_owned()),
            });
            return again(
                StatusCode::UNAUTHORIZED,
                refusal.status.message().to_owned(),
            );
        }
    };
    if let Err(why) = admit(security, &caller) {
        return again(StatusCode::FORBIDDEN, why);
    }
    security.audit().record(AuditEvent {
        event: "sign_in",
        identity: Some(caller.identity.to_string()),
        credential: Some("token"),
        peer: Some(conn.remote),
        rpc: Some(RPC),
        agent_id: None,
        result: "ok",
        reason: None,
        detail: None,
    });
    let expires = match &caller.credential {
        crate::security::Credential::Token {
            expires: Some(e), ..
        } => e
            .duration_since(security.now())
            .unwrap_or_default()
            .min(KEPT_FOR),
        _ => KEPT_FOR,
    };
    let kept = Cookie::build((TOKEN_COOKIE, token.to_owned()))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(expires.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    let mut response = Redirect::to(&next).into_response();
    let (k, v) = set_cookie(&kept);
    response.headers_mut().append(k, v);
    harden(&mut response, true);
    response
}

/// What the sign-out form sends.
#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: String,
}

/// Signs out: the browser forgets the token.
pub(super) async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !matches!(web.gate, Gate::Signed(_)) {
        return Redirect::to("/").into_response();
    }
    if !csrf_ok(&headers, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "the sign-out form had expired or came from another site; reload the page and sign out again\n",
        )
            .into_response();
    }
    let gone = Cookie::build((TOKEN_COOKIE, ""))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut response = Redirect::to("/login").into_response();
    let (k, v) = set_cookie(&gone);
    response.headers_mut().append(k, v);
    harden(&mut response, true);
    response
}

/// Whether the credential a live stream was opened with still holds.
pub(super) fn still_holds(security: &Arc<Security>, caller: &Caller) -> bool {
    security.expired(&caller.credential).is_none()
        && security
            .still_valid(&caller.credential, &caller.identity)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_signing_in() {
        assert_eq!(local(Some("/agents?state=faulty")), "/agents?state=faulty");
        assert_eq!(local(Some("//evil.example/")), "/");
        assert_eq!(local(Some("https://evil.example/")), "/");
        assert_eq!(local(Some("/\\evil.example")), "/");
        assert_eq!(local(None), "/");
    }

    #[test]
    fn a_post_needs_the_csrf_cookie_and_value_and_this_origin() {
        let value = "0123456789abcdef0123456789abcdef";
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {CSRF_COOKIE}={value}")).expect("header"),
        );
        h.insert(header::HOST, HeaderValue::from_static("fleet:8443"));
        assert!(csrf_ok(&h, value));
        assert!(!csrf_ok(&h, "0123456789abcdef0123456789abcdee"));
        assert!(!csrf_ok(&h, ""));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://fleet:8443"),
        );
        assert!(csrf_ok(&h, value));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!csrf_ok(&h, value));
        assert!(!csrf_ok(&HeaderMap::new(), value));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; fleet_health_token=fht_abc; y=2"),
        );
        assert_eq!(cookie(&h, TOKEN_COOKIE).as_deref(), Some("fht_abc"));
        assert_eq!(cookie(&h, "y").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "z"), None);
    }
}
