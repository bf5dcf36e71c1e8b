//! The OpenAPI 3.1 document (`openapi/openapi.json`, issue 19 item 3): it
//! parses, its references resolve, it names every refusal code the send
//! path can produce with that code's status, and the API serves it as kept
//! in the repository. `.ci/run` also runs a property-based fuzzer
//! (schemathesis) reading it against the live relay.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sms_conduit::api::routes::{OPENAPI_JSON, OPENAPI_ROUTE};
use sms_conduit::api::{AlwaysReady, NoRouteService, SendError};
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
