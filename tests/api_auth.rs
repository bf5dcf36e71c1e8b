//! The client API's authentication and error documents, over real HTTPS.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;

use sms_conduit::api::{NoRouteService, Readiness};
use sms_conduit::tools::AlwaysReady;
use support::{expect_problem, start_api, TestEnv};

const SEND: &str =
    r#"{"from":"+15551230001","to":"+15557654321","text":"hello","campaign_id":"CTEST01"}"#;

struct NotReady;

impl Readiness for NotReady {
    fn ready(&self) -> Result<(), String> {
        Err("carrier carrier-a has no bound session".into())
    }
}

async fn setup() -> (TestEnv, support::Running, reqwest::Client) {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let client = env.client();
    (env, api, client)
}

fn post(c: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
    c.post(url).header("content-type", "application/json")
}

#[tokio::test]
async fn no_key_is_401_with_www_authenticate() {
    let (_env, api, c) = setup().await;
    let r = post(&c, api.url("/v1/messages"))
        .body(SEND)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    expect_problem(r, 401, "unauthorized").await;
    assert_eq!(api.metrics.auth_failures.get(), 1);
    api.stop().await;
}

#[tokio::test]
async fn wrong_key_is_401() {
    let (_env, api, c) = setup().await;
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth("sk_live_not-a-real-key")
        .body(SEND)
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    let r = c
        .get(api.url("/v1/messages/msg_1"))
        .bearer_auth("sk_live_not-a-real-key")
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    api.stop().await;
}

#[tokio::test]
async fn malformed_header_is_401() {
    let (env, api, c) = setup().await;
    for h in [
        format!("Basic {}", env.api_key),
        env.api_key.clone(),
        "Bearer".to_owned(),
        format!("Bearer {}x", env.api_key),
    ] {
        let r = post(&c, api.url("/v1/messages"))
            .header("authorization", h)
            .body(SEND)
            .send()
            .await
            .unwrap();
        expect_problem(r, 401, "unauthorized").await;
    }
    api.stop().await;
}

#[tokio::test]
async fn right_key_reaches_the_service() {
    let (env, api, c) = setup().await;
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .header("idempotency-key", "k-1")
        .body(SEND)
        .send()
        .await
        .unwrap();
    expect_problem(r, 422, "no_route").await;
    let r = c
        .get(api.url("/v1/messages/msg_123"))
        .bearer_auth(&env.api_key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;
    assert_eq!(api.metrics.auth_failures.get(), 0);
    api.stop().await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_429_even_with_a_good_key() {
    let (env, api, c) = setup().await;
    for i in 0..10 {
        let r = post(&c, api.url("/v1/messages"))
            .bearer_auth(format!("sk_live_guess{i}"))
            .body(SEND)
            .send()
            .await
            .unwrap();
        expect_problem(r, 401, "unauthorized").await;
    }
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth("sk_live_guess-again")
        .body(SEND)
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    expect_problem(r, 429, "auth_locked_out").await;
    // Locked out, but the right key still gets through: another party's
    // failures never refuse a valid key (issue 20 item 4). It reaches the
    // service (NoRouteService: 422 no_route), not the lock-out.
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .body(SEND)
        .send()
        .await
        .unwrap();
    expect_problem(r, 422, "no_route").await;
    api.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (env, api, c) = setup().await;
    let big = format!(
        r#"{{"from":"+15551230001","to":"+15557654321","text":"{}","campaign_id":"CTEST01"}}"#,
        "a".repeat(100 * 1024)
    );
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .body(big)
        .send()
        .await
        .unwrap();
    expect_problem(r, 413, "payload_too_large").await;
    api.stop().await;
}

#[tokio::test]
async fn bad_json_is_400_without_echoing_input() {
    let (env, api, c) = setup().await;
    let canary = "CANARY-4d1f-patient-text";
    let bodies = [
        format!(
            r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}" "campaign_id":"CTEST01"}}"#
        ),
        format!(
            r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}","campaign_id":"CTEST01","validity_secs":"{canary}"}}"#
        ),
        format!(r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}"#),
        format!(r#"{{"from":"+15551230001","to":"{canary}","text":"x","campaign_id":"CTEST01"}}"#),
    ];
    for b in bodies {
        let r = post(&c, api.url("/v1/messages"))
            .bearer_auth(&env.api_key)
            .body(b)
            .send()
            .await
            .unwrap();
        let doc = expect_problem(r, 400, "invalid_request").await;
        let text = doc.to_string();
        assert!(!text.contains("CANARY"), "{text}");
        assert!(!text.contains("+1555"), "{text}");
    }
    api.stop().await;
}

#[tokio::test]
async fn unknown_field_and_bad_number_are_400() {
    let (env, api, c) = setup().await;
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .body(r#"{"from":"+15551230001","to":"+15557654321","text":"x","campaign_id":"CTEST01","priority":"high"}"#)
        .send()
        .await
        .unwrap();
    let doc = expect_problem(r, 400, "invalid_request").await;
    assert!(doc["detail"].as_str().unwrap().contains("unknown field"));
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .body(r#"{"from":"+15551230001","to":"5557654321","text":"x","campaign_id":"CTEST01"}"#)
        .send()
        .await
        .unwrap();
    let doc = expect_problem(r, 400, "invalid_request").await;
    assert!(doc["detail"].as_str().unwrap().contains("`to`"), "{doc}");
    api.stop().await;
}

#[tokio::test]
async fn wrong_content_type_route_and_method_are_problems() {
    let (env, api, c) = setup().await;
    let r = c
        .post(api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .header("content-type", "text/plain")
        .body(SEND)
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "invalid_request").await;
    let r = c.get(api.url("/v2/nothing")).send().await.unwrap();
    expect_problem(r, 404, "not_found").await;
    let r = c.delete(api.url("/v1/messages")).send().await.unwrap();
    expect_problem(r, 405, "method_not_allowed").await;
    let r = post(&c, api.url("/v1/messages"))
        .bearer_auth(&env.api_key)
        .header("idempotency-key", "")
        .body(SEND)
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "invalid_request").await;
    api.stop().await;
}

#[tokio::test]
async fn healthz_is_200() {
    let (_env, api, c) = setup().await;
    let r = c.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc, serde_json::json!({"status": "ok"}));
    let r = c.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    api.stop().await;
}

#[tokio::test]
async fn readyz_is_503_when_not_ready() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(NotReady)).await;
    let r = env.client().get(api.url("/readyz")).send().await.unwrap();
    let doc = expect_problem(r, 503, "not_ready").await;
    assert!(doc["detail"].as_str().unwrap().contains("carrier-a"));
    api.stop().await;
}
