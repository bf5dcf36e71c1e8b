//! Opt-out administration for clients: `GET/PUT/DELETE
//! /v1/campaigns/{id}/opt-outs/{e164}`, over real HTTPS against the real
//! relay, with the send path honouring what it set.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use support::expect_problem;
use support::relay::*;

const PW: &str = "optpw1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_put_get_and_delete_opt_outs_on_their_own_campaigns() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let relay = Relay::start(files, Setup::one(&sim, PW)).await;
    let path = format!("/v1/campaigns/{CAMPAIGN}/opt-outs/{TO}");
    let c = &relay.client;

    // Not opted out yet: 404.
    let r = c
        .get(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;

    // PUT opts out; the send path refuses; GET shows it.
    let r = c
        .put(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["opted_out"], true);
    assert_eq!(v["campaign_id"], CAMPAIGN);
    expect_problem(
        relay
            .send(&message("Reminder: appointment tomorrow."))
            .await,
        422,
        "recipient_opted_out",
    )
    .await;
    let r = c
        .get(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // PUT again is idempotent.
    let r = c
        .put(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Another client may not touch this campaign's list.
    let r = c
        .delete(relay.url(&path))
        .bearer_auth(&relay.other_key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 403, "campaign_not_allowed").await;
    let r = c.get(relay.url(&path)).send().await.unwrap();
    expect_problem(r, 401, "unauthorized").await;

    // A bad number is a 400 that does not echo it.
    let r = c
        .get(relay.url(&format!("/v1/campaigns/{CAMPAIGN}/opt-outs/5551234")))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 400, "invalid_request").await;
    assert!(!p.to_string().contains("5551234"));

    // DELETE opts back in: 204, then sends go through.
    let r = c
        .delete(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A number that is not opted out is a 404 that says so, not "no such message".
    let r = c
        .get(relay.url(&path))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 404, "not_found").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not opted out"),
        "{p}"
    );
    let r = relay
        .send(&message("Reminder: appointment tomorrow."))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        sim.submits(),
        1,
        "only the send after the opt-in reached the carrier"
    );
}
