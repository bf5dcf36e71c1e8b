//! The OpenAPI 3.1 document (`openapi/openapi.json`, issue 19 item 3): it
//! parses, its references resolve, it names every refusal code the send
//! path can produce with that code's status, and the API serves it as kept
//! in the repository. `.ci/run` also runs a property-based fuzzer
//! (schemathesis) reading it against the live relay.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sms_conduit::api::routes::{OPENAPI_JSON, OPENAPI_ROUTE};
use sms_conduit::api::{NoRouteService, SendError};
use sms_conduit::tools::AlwaysReady;
use support::{start_api, TestEnv};

fn doc() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi/openapi.json is JSON")
}

/// Every variant of [`SendError`]. The `match` has no wildcard, so a new
/// variant does not compile until it is added here (and so checked below).
fn every_send_error() -> Vec<SendError> {
    let d = Duration::from_secs(1);
    let all = vec![
        SendError::InvalidRequest("x".into()),
        SendError::Unauthorized,
        SendError::KeyExpired {
            not_after: "2020-01-01T00:00:00Z".into(),
        },
        SendError::ClientCertRequired,
        SendError::ConsentMissing,
        SendError::CampaignNotAllowed,
        SendError::SenderNotInCampaign,
        SendError::IdempotencyConflict,
        SendError::RecipientOptedOut,
        SendError::RateLimited { retry_after: d },
        SendError::AuthLockedOut { retry_after: d },
        SendError::DailyCapReached { retry_after: d },
        SendError::CarrierRejected {
            status_name: "ESME_RSUBMITFAIL".into(),
        },
        SendError::NoRoute,
        SendError::CarrierUnavailable { retry_after: d },
        SendError::StoreUnavailable,
        SendError::SharedStateUnavailable,
        SendError::IdempotencyOutcomeUnknown,
        SendError::CarrierTimeout,
        SendError::NotFound,
        SendError::Absent("this number is not opted out"),
        SendError::Internal,
    ];
    for e in &all {
        match e {
            SendError::InvalidRequest(_)
            | SendError::Unauthorized
            | SendError::KeyExpired { .. }
            | SendError::ClientCertRequired
            | SendError::ConsentMissing
            | SendError::CampaignNotAllowed
            | SendError::SenderNotInCampaign
            | SendError::IdempotencyConflict
            | SendError::RecipientOptedOut
            | SendError::RateLimited { .. }
            | SendError::AuthLockedOut { .. }
            | SendError::DailyCapReached { .. }
            | SendError::CarrierRejected { .. }
            | SendError::NoRoute
            | SendError::CarrierUnavailable { .. }
            | SendError::StoreUnavailable
            | SendError::SharedStateUnavailable
            | SendError::IdempotencyOutcomeUnknown
            | SendError::CarrierTimeout
            | SendError::NotFound
            | SendError::Absent(_)
            | SendError::Internal => {}
        }
    }
    all
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    let ptr = r.strip_prefix('#')?;
    doc.pointer(ptr)
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_1_and_every_reference_resolves() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "{} references", all.len());
    for r in all {
        assert!(resolve(&doc, r).is_some(), "unresolved $ref {r}");
    }
    for path in [
        "/healthz",
        "/readyz",
        OPENAPI_ROUTE,
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/campaigns/{campaign}/opt-outs/{number}",
        "/v1/campaigns/{campaign}/consents/{number}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} not documented");
    }
    for hook in ["message.status", "message.received"] {
        let op = &doc["webhooks"][hook]["post"];
        assert!(op.is_object(), "webhook {hook} not documented");
        let p = resolve(&doc, op["parameters"][0]["$ref"].as_str().unwrap()).unwrap();
        assert_eq!(p["name"], sms_conduit::webhook::sign::HEADER);
    }
}

#[test]
fn every_send_error_code_is_documented_with_its_status() {
    let doc = doc();
    let codes: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Every (status, response) of every operation, references followed.
    let mut responses: Vec<(&str, &Value)> = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let Some(rs) = op["responses"].as_object() else {
                continue;
            };
            for (status, r) in rs {
                let r = match r["$ref"].as_str() {
                    Some(s) => resolve(&doc, s).unwrap(),
                    None => r,
                };
                responses.push((status, r));
            }
        }
    }
    for e in every_send_error() {
        let p = e.problem();
        assert!(
            codes.contains(&e.code()),
            "code {} of {e:?} missing from ProblemCode",
            e.code()
        );
        let status = p.status.as_str().to_owned();
        let named = format!("`{}`", e.code());
        let documented: Vec<&Value> = responses
            .iter()
            .filter(|(s, r)| {
                *s == status
                    && r["description"]
                        .as_str()
                        .is_some_and(|d| d.contains(&named))
            })
            .map(|(_, r)| *r)
            .collect();
        assert!(
            !documented.is_empty(),
            "no {status} response names {named} ({e:?})"
        );
        for r in documented {
            if p.retry_after.is_some() {
                assert!(
                    r["headers"]["Retry-After"].is_object(),
                    "{status} Retry-After"
                );
            }
            if p.www_authenticate {
                assert!(
                    r["headers"]["WWW-Authenticate"].is_object(),
                    "{status} WWW-Authenticate"
                );
            }
        }
    }
    // The codes built outside SendError, by the routes and /readyz.
    for c in ["payload_too_large", "method_not_allowed", "not_ready"] {
        assert!(codes.contains(&c), "{c} missing from ProblemCode");
    }
}

#[tokio::test]
async fn the_api_serves_the_document_without_a_key() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let resp = env
        .client()
        .get(api.url(OPENAPI_ROUTE))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), OPENAPI_JSON);
    api.stop().await;
}

/// The route templates the router serves, read from the router's source
/// (`src/api/routes.rs`, every `.route(` call; a `const` first argument is
/// resolved in the same file). axum does not list its routes, so the
/// source is the list, and [`every_route_the_router_serves_is_documented`]
/// then asks the live router which methods each one answers.
fn router_templates() -> Vec<String> {
    let src = include_str!("../src/api/routes.rs");
    let body = src
        .split("pub fn router(")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .expect("fn router in src/api/routes.rs");
    let mut out = Vec::new();
    for call in body.split(".route(").skip(1) {
        let arg = call
            .trim_start()
            .split([',', ')'])
            .next()
            .unwrap_or("")
            .trim();
        let path = if let Some(lit) = arg.strip_prefix('"') {
            lit.trim_end_matches('"').to_owned()
        } else {
            let decl = format!("const {arg}: &str = \"");
            let rest = src
                .split(&decl)
                .nth(1)
                .unwrap_or_else(|| panic!("route constant {arg} not found in routes.rs"));
            rest.split('"').next().unwrap_or("").to_owned()
        };
        assert!(path.starts_with('/'), "route {arg:?} is not a path");
        out.push(path);
    }
    assert!(out.len() >= 7, "only {} routes found: {out:?}", out.len());
    out
}

/// A concrete path for a template: `{number}` a valid E.164, other
/// parameters a plausible id.
fn concrete(template: &str) -> String {
    template
        .replace("{number}", "+15557654321")
        .replace("{campaign}", "CX4K2M9")
        .replace("{id}", "msg_0123456789abcdef")
}

/// `/a/{x}/b` and `/a/{y}/b` compare equal (the README and the document
/// may name a parameter differently).
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Every route the router serves, with every method it answers (anything
/// but 404 and 405, asked without a key), is an operation of the document,
/// and every operation of the document is served; and the README's
/// endpoint list names each of them.
#[tokio::test]
async fn every_route_the_router_serves_is_documented() {
    let doc = doc();
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let client = env.client();
    let mut served: Vec<(String, String)> = Vec::new();
    let mut templates = router_templates();
    // Paths only the document names must be served too.
    for p in doc["paths"].as_object().unwrap().keys() {
        if !templates.contains(p) {
            templates.push(p.clone());
        }
    }
    for t in &templates {
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
            let resp = client
                .request(method, api.url(&concrete(t)))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let s = resp.status().as_u16();
            if s != 404 && s != 405 {
                served.push((m.to_owned(), t.clone()));
            }
        }
    }
    api.stop().await;

    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            if m != "parameters" {
                documented.push((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    for op in &served {
        assert!(
            documented.contains(op),
            "the router serves {} {} but openapi/openapi.json does not document it",
            op.0,
            op.1
        );
    }
    for op in &documented {
        assert!(
            served.contains(op),
            "openapi/openapi.json documents {} {} but the router does not serve it",
            op.0,
            op.1
        );
    }

    // README: "`GET/PUT/DELETE /v1/campaigns/{id}/opt-outs/{e164}`" and
    // the like, anywhere in the file.
    let readme = include_str!("../README.md");
    let mut listed: Vec<(String, String)> = Vec::new();
    for span in readme.split('`') {
        let Some((methods, path)) = span.split_once(' ') else {
            continue;
        };
        if !path.starts_with('/') || path.contains(' ') {
            continue;
        }
        for m in methods.split('/') {
            if METHODS.contains(&m) {
                listed.push((m.to_owned(), shape(path)));
            }
        }
    }
    for (m, p) in &served {
        assert!(
            listed.contains(&(m.clone(), shape(p))),
            "README.md does not list `{m} {p}` (its endpoint list, e.g. \"The API in one breath\")"
        );
    }
}

/// Every authenticated operation documents what authentication can answer
/// (401 `unauthorized`, 429 `auth_locked_out`) and a bug (500); every
/// operation that reads or changes shared state (opt-outs, consents, a
/// message on another fleet node) documents 503 `shared_state_unavailable`.
#[test]
fn every_operation_documents_the_refusals_it_can_get() {
    let doc = doc();
    let resolved = |r: &Value| -> Value {
        match r["$ref"].as_str() {
            Some(s) => resolve(&doc, s).unwrap().clone(),
            None => r.clone(),
        }
    };
    let names = |r: &Value, code: &str| {
        resolved(r)["description"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("`{code}`")))
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            if m == "parameters" {
                continue;
            }
            let rs = &op["responses"];
            let public = op["security"].as_array().is_some_and(Vec::is_empty);
            if !public {
                checked += 1;
                assert!(names(&rs["401"], "unauthorized"), "{m} {path}: 401");
                assert!(names(&rs["429"], "auth_locked_out"), "{m} {path}: 429");
                assert!(names(&rs["500"], "internal_error"), "{m} {path}: 500");
                assert!(
                    resolved(&rs["429"])["headers"]["Retry-After"].is_object(),
                    "{m} {path}: 429 Retry-After"
                );
            }
            if path.starts_with("/v1/campaigns/") || path == "/v1/messages/{id}" {
                assert!(
                    names(&rs["503"], "shared_state_unavailable"),
                    "{m} {path}: 503 shared_state_unavailable"
                );
            }
            if path.starts_with("/v1/campaigns/") {
                assert!(names(&rs["403"], "campaign_not_allowed"), "{m} {path}");
                assert!(names(&rs["400"], "invalid_request"), "{m} {path}");
                assert!(names(&rs["404"], "not_found"), "{m} {path}");
            }
        }
    }
    assert!(checked >= 8, "{checked} authenticated operations");
    // POST /v1/messages: every code of the send path, by status.
    let send = &doc["paths"]["/v1/messages"]["post"]["responses"];
    for (status, code) in [
        ("409", "idempotency_conflict"),
        ("422", "consent_missing"),
        ("422", "recipient_opted_out"),
        ("429", "rate_limited"),
        ("429", "daily_cap_reached"),
        ("503", "carrier_unavailable"),
        ("503", "store_unavailable"),
        ("503", "shared_state_unavailable"),
        ("504", "carrier_timeout"),
    ] {
        assert!(
            names(&send[status], code),
            "POST /v1/messages {status} {code}"
        );
    }
}

/// Every problem `code` a client can get (the document's `ProblemCode`)
/// is named in the README, where an integrator reads the outcomes first.
#[test]
fn every_problem_code_is_in_the_readme() {
    let doc = doc();
    let readme = include_str!("../README.md");
    let codes = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum");
    assert!(codes.len() >= 20);
    for c in codes.iter().filter_map(Value::as_str) {
        assert!(
            readme.contains(&format!("`{c}`")),
            "README.md does not name the problem code `{c}`"
        );
    }
}
