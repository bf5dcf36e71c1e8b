//! The HTTP routes of the client API (SPEC §4) and their error mapping.
//!
//! Owns: the axum [`router`], the `Bearer` extractor, reading request bodies
//! (size limit before buffering, buffered into a zeroizing buffer because the
//! body holds message text), turning axum's own failures (unknown route, wrong
//! method, wrong content type) into problem documents, and counting requests
//! per route *template* in `api_requests`, and serving the API's OpenAPI
//! document (`openapi/openapi.json`, compiled in).
//!
//! Must not know: sockets, TLS, or what sending means — that is the
//! [`MessageService`](super::MessageService) behind [`ApiState`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::service::{OptOutChange, OptOutView};
pub use crate::relay::domain::{ConsentEvidence, ConsentMethod, ConsentService};
use crate::types::E164;
use axum::{Json, Router};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use super::problem::{Problem, SendError};
use super::service::{ClientId, SendRequest};
use super::ApiState;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed to receive a whole request body once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Route template label for requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The client API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(OPENAPI_ROUTE, get(openapi))
        .route(SEND_ROUTE, post(send_message))
        .route("/v1/messages/{id}", get(get_message))
        .route(
            "/v1/campaigns/{campaign}/opt-outs/{number}",
            get(get_opt_out).put(put_opt_out).delete(delete_opt_out),
        )
        .route(
            "/v1/campaigns/{campaign}/consents/{number}",
            get(get_consent).put(put_consent).delete(delete_consent),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts the request by route template and status, and marks API answers
/// uncacheable (they may carry metadata about patients' messages).
async fn observe(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    // A `MatchedPath` clone is a reference count, not a copy of the text.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    finish(
        &state,
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        resp,
    )
}

/// What [`observe`] does to every answer, for the router and [`send_direct`].
fn finish(state: &ApiState, route: &str, mut resp: Response) -> Response {
    state
        .metrics
        .api_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The route template of the send endpoint.
const SEND_ROUTE: &str = "/v1/messages";

/// Whether `req` is `POST /v1/messages`, which [`send_direct`] serves.
pub(crate) fn is_send<B>(req: &axum::http::Request<B>) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path() == SEND_ROUTE
}

/// `POST /v1/messages`, served without the router: the same authentication,
/// handler and [`finish`] as the routed endpoint, minus the routing, the
/// middleware and extractor machinery around them (~4 µs of the ~60 each
/// message costs, measured with `perf`, on the one route that carries the
/// load). The routed
/// endpoint stays for any caller that goes through [`router`].
pub(crate) async fn send_direct(
    state: ApiState,
    peer: IpAddr,
    cert: Option<[u8; 32]>,
    req: axum::http::Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    let resp = match authenticate(&state, &parts.headers, peer, cert.as_ref()) {
        Ok(client) => send(&state, client, &parts.headers, HttpBody::new(body)).await,
        Err(e) => {
            discard_body(HttpBody::new(body)).await;
            e.into_response()
        }
    };
    finish(&state, SEND_ROUTE, resp)
}

/// Where the API's own OpenAPI document is served.
pub const OPENAPI_ROUTE: &str = "/v1/openapi.json";

/// The OpenAPI 3.1 document of this API, as kept in the repository. Served
/// without authentication, like `/healthz`: it holds no secret and no
/// deployment detail, and an integrator (or a fuzzer) reads it first.
pub const OPENAPI_JSON: &str = include_str!("../../openapi/openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let carriers = state.readiness.carriers();
    match state.readiness.ready() {
        Ok(()) => {
            Json(serde_json::json!({"status": "ready", "carriers": carriers})).into_response()
        }
        Err(reason) => {
            let p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "Not ready",
                reason,
            );
            // The problem document with the per-carrier state beside it,
            // which an operator wants most when the node is not ready.
            let body = serde_json::json!({
                "type": p.type_uri,
                "title": p.title,
                "status": 503,
                "detail": p.detail,
                "code": p.code,
                "carriers": carriers,
            });
            let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(super::problem::PROBLEM_CONTENT_TYPE),
            );
            resp
        }
    }
}

async fn not_found() -> Problem {
    Problem::route_not_found()
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}

/// SHA-256 of the client certificate the request's TLS connection
/// presented (`None`: none, or plaintext), put in each request's extensions
/// by the listener for keys that require one.
#[derive(Debug, Clone, Copy)]
pub struct PeerCert(pub Option<[u8; 32]>);

/// An authenticated client, from `Authorization: Bearer …`.
pub struct Authed(pub ClientId);

impl FromRequestParts<ApiState> for Authed {
    type Rejection = SendError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let cert = parts.extensions.get::<PeerCert>().and_then(|c| c.0);
        authenticate(state, &parts.headers, peer, cert.as_ref()).map(Authed)
    }
}

fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    peer: IpAddr,
    cert: Option<&[u8; 32]>,
) -> Result<ClientId, SendError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    state.auth.authenticate_with_cert(h, peer, cert)
}

async fn send_message(
    State(state): State<ApiState>,
    Authed(client): Authed,
    req: Request,
) -> Response {
    // The request itself rather than a `HeaderMap` extractor, which clones
    // every header on the hottest route.
    let (parts, body) = req.into_parts();
    send(&state, client, &parts.headers, body).await
}

/// The send endpoint once the client is known.
async fn send(state: &ApiState, client: ClientId, headers: &HeaderMap, body: HttpBody) -> Response {
    if let Err(p) = check_json_content_type(headers) {
        discard_body(body).await;
        return p.into_response();
    }
    let idempotency_key = match idempotency_key(headers) {
        Ok(k) => k,
        Err(e) => {
            discard_body(body).await;
            return e.into_response();
        }
    };
    let bytes = match read_body(headers, body).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let req = match SendRequest::from_json(&bytes) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    drop(bytes); // zeroized: the raw JSON held the text
    match state.service.send(&client, req, idempotency_key).await {
        Ok(accepted) => {
            let mut path = String::with_capacity(SEND_ROUTE.len() + 1 + accepted.id.len());
            path.push_str(SEND_ROUTE);
            path.push('/');
            path.push_str(&accepted.id);
            let location = HeaderValue::try_from(path).ok();
            let mut resp = (StatusCode::CREATED, Json(accepted)).into_response();
            if let Some(l) = location {
                resp.headers_mut().insert(header::LOCATION, l);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn get_message(
    State(state): State<ApiState>,
    Authed(client): Authed,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return SendError::NotFound.into_response();
    };
    let plausible = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plausible {
        return SendError::NotFound.into_response();
    }
    match state.service.get(&client, &id).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

type OptOutPath = Result<Path<(String, String)>, axum::extract::rejection::PathRejection>;

/// The campaign and the E.164 number of an opt-out route; errors never echo
/// the number.
fn opt_out_target(path: OptOutPath) -> Result<(String, E164), SendError> {
    let Ok(Path((campaign, number))) = path else {
        return Err(SendError::NotFound);
    };
    let number = E164::parse(&number).map_err(|_| {
        SendError::InvalidRequest(
            "the number in the path is not E.164 (+ and 7 to 15 digits)".into(),
        )
    })?;
    Ok((campaign, number))
}

fn opt_out_response(r: Result<OptOutView, SendError>, no_content: bool) -> Response {
    match r {
        Ok(_) if no_content => StatusCode::NO_CONTENT.into_response(),
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The 404 detail of an opt-out look-up for a number that is not opted out.
const NOT_OPTED_OUT: &str =
    "this number is not opted out of this campaign (no opt-out is recorded)";

/// The 404 detail of a consent look-up for a number with no consent.
const NO_CONSENT: &str = "no consent is recorded for this number on this campaign";

async fn get_opt_out(
    State(state): State<ApiState>,
    Authed(client): Authed,
    path: OptOutPath,
) -> Response {
    let (campaign, number) = match opt_out_target(path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let r = state
        .opt_outs
        .opt_out_status(&client, &campaign, &number)
        .await;
    match r {
        Ok(v) if !v.opted_out => SendError::Absent(NOT_OPTED_OUT).into_response(),
        r => opt_out_response(r, false),
    }
}

async fn put_opt_out(state: State<ApiState>, client: Authed, path: OptOutPath) -> Response {
    change_opt_out(state, client, path, OptOutChange::Add).await
}

async fn delete_opt_out(state: State<ApiState>, client: Authed, path: OptOutPath) -> Response {
    change_opt_out(state, client, path, OptOutChange::Remove).await
}

/// PUT answers the new state (200); DELETE answers 204.
async fn change_opt_out(
    State(state): State<ApiState>,
    Authed(client): Authed,
    path: OptOutPath,
    change: OptOutChange,
) -> Response {
    let (campaign, number) = match opt_out_target(path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let r = state
        .opt_outs
        .opt_out_change(&client, &campaign, &number, change)
        .await;
    opt_out_response(r, change == OptOutChange::Remove)
}

/// Largest accepted consent body (evidence metadata only).
const MAX_CONSENT_BODY: usize = 4 * 1024;
/// Longest `client_ref` of a consent: a reference to the client's own
/// record of the evidence, not the evidence.
const MAX_CLIENT_REF: usize = 128;

/// A consent as `GET/PUT /v1/campaigns/{id}/consents/{e164}` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsentView {
    pub campaign_id: String,
    pub number: String,
    #[serde(flatten)]
    pub evidence: ConsentEvidence,
}

fn consents(state: &ApiState) -> Result<&std::sync::Arc<dyn ConsentService>, SendError> {
    state.consents.as_ref().ok_or(SendError::NotFound)
}

async fn get_consent(
    State(state): State<ApiState>,
    Authed(client): Authed,
    path: OptOutPath,
) -> Response {
    let r = async {
        let (campaign, number) = opt_out_target(path)?;
        let evidence = consents(&state)?
            .consent(&client, &campaign, &number)
            .await?
            .ok_or(SendError::Absent(NO_CONSENT))?;
        Ok::<_, SendError>(ConsentView {
            campaign_id: campaign,
            number: number.as_str().to_owned(),
            evidence,
        })
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `PUT` body: the evidence's metadata. Errors name the field, never a value.
async fn put_consent(
    State(state): State<ApiState>,
    Authed(client): Authed,
    path: OptOutPath,
    req: Request,
) -> Response {
    // Read like a send's body (64 KiB at most, 30 s), so an oversized or
    // slow body gets its problem document (413, 408) and not axum's text.
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let r = async {
        let (campaign, number) = opt_out_target(path)?;
        if body.len() > MAX_CONSENT_BODY {
            return Err(SendError::InvalidRequest("body too large".into()));
        }
        let evidence: ConsentEvidence = serde_json::from_slice(&body).map_err(|_| {
            SendError::InvalidRequest(
                "body must be {\"method\": \"web_form|keyword|paper|verbal\", \"at\": RFC 3339, \"client_ref\"?: string}".into(),
            )
        })?;
        let at = chrono::DateTime::parse_from_rfc3339(&evidence.at)
            .map_err(|_| SendError::InvalidRequest("`at` is not an RFC 3339 time".into()))?;
        if let Some(r) = &evidence.client_ref {
            if r.is_empty() || r.len() > MAX_CLIENT_REF || !r.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SendError::InvalidRequest(format!(
                    "`client_ref` must be 1-{MAX_CLIENT_REF} visible ASCII characters"
                )));
            }
        }
        let evidence = ConsentEvidence {
            at: at
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ..evidence
        };
        consents(&state)?
            .change_consent(&client, &campaign, &number, Some(evidence.clone()))
            .await?;
        Ok(ConsentView {
            campaign_id: campaign,
            number: number.as_str().to_owned(),
            evidence,
        })
    }
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE` withdraws the consent: 204.
async fn delete_consent(
    State(state): State<ApiState>,
    Authed(client): Authed,
    path: OptOutPath,
) -> Response {
    let r = async {
        let (campaign, number) = opt_out_target(path)?;
        consents(&state)?
            .change_consent(&client, &campaign, &number, None)
            .await
    }
    .await;
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `Content-Type` must be `application/json` (parameters allowed).
fn check_json_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Unsupported media type",
            "Content-Type must be application/json",
        ))
    }
}

/// The optional `Idempotency-Key`: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, SendError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let b = v.as_bytes();
    if b.is_empty() || b.len() > MAX_IDEMPOTENCY_KEY || !b.iter().all(u8::is_ascii_graphic) {
        return Err(SendError::InvalidRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(b).into_owned()))
}

/// How long the body of a request refused before reading it (wrong key,
/// wrong `Content-Type`, bad `Idempotency-Key`) is read and discarded
/// before the answer goes out. Answering while an HTTP/2 client is still
/// sending ends the stream with a reset that curl reports as `(92) Stream
/// error` instead of the 401/415; a body that arrives in time avoids it. A
/// client slower than this gets the answer anyway.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads and drops up to [`MAX_BODY`] bytes of `body` within
/// [`DISCARD_TIMEOUT`]: bounded work for a refused request, nothing kept.
async fn discard_body(mut body: HttpBody) {
    let drain = async move {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > MAX_BODY {
                    break;
                }
            }
        }
    };
    let _ = crate::deadline::within(DISCARD_TIMEOUT, drain).await;
}

/// Reads a request body into a zeroizing buffer, refusing more than
/// [`MAX_BODY`] bytes as soon as that is known (from `Content-Length`, or
/// while streaming) and giving up after [`BODY_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: HttpBody) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Problem::payload_too_large(MAX_BODY));
    }
    let cap = declared.map_or(4096, |n| n as usize);
    // A small body usually arrived with the headers: only a body that has
    // to be waited for arms the timer.
    match crate::deadline::within(BODY_TIMEOUT, collect_limited(body, cap)).await {
        Ok(r) => r,
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "Request timeout",
            "the request body did not arrive in time",
        )),
    }
}

async fn collect_limited(mut body: HttpBody, cap: usize) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let mut buf = Zeroizing::new(Vec::with_capacity(cap.min(MAX_BODY)));
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Problem::invalid_request("the request body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(Problem::payload_too_large(MAX_BODY));
            }
            if buf.capacity() < buf.len() + data.len() {
                // Grow by hand so the old allocation is wiped, not just freed.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (buf.len() + data.len()).max(buf.len() * 2),
                ));
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}
