//! After the sends: the wait for deliveries, the opt-out step and the
//! metrics scrape.

use super::*;

/// Where the delivery count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeliverySource {
    Webhook,
    Store,
}

pub(super) struct Deliveries {
    pub(super) delivered: u64,
    pub(super) source: DeliverySource,
    pub(super) webhook_events: u64,
    pub(super) waited: Duration,
}

/// Ids of delivered messages according to the sink's `message.status` events,
/// and whether any status event arrived at all.
pub(super) fn delivered_at_sink(sink: &Sink) -> (HashSet<String>, u64) {
    let mut ids = HashSet::new();
    let mut status_events = 0;
    for ev in sink.events() {
        if ev.get("type").and_then(|t| t.as_str()) != Some("message.status") {
            continue;
        }
        status_events += 1;
        let data = ev.get("data");
        let status = data.and_then(|d| d.get("status")).and_then(|s| s.as_str());
        let id = data.and_then(|d| d.get("id")).and_then(|s| s.as_str());
        if let (Some("delivered"), Some(id)) = (status, id) {
            ids.insert(id.to_owned());
        }
    }
    (ids, status_events)
}

/// Waits (bounded) until every accepted message is delivered: by the sink's
/// `message.status` events when they arrive, else by the store.
pub(super) async fn wait_deliveries(api: &Api, sink: &Sink, accepted: &[String]) -> Deliveries {
    let started = Instant::now();
    let deadline = started + DELIVERY_WAIT;
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let mut from_store: HashSet<String> = HashSet::new();
    loop {
        let (at_sink, events) = delivered_at_sink(sink);
        let sink_count = want.iter().filter(|id| at_sink.contains(**id)).count() as u64;
        if events > 0 {
            // The relay emits status webhooks: they are the source of truth.
            if sink_count == want.len() as u64 || Instant::now() >= deadline {
                return Deliveries {
                    delivered: sink_count,
                    source: DeliverySource::Webhook,
                    webhook_events: events,
                    waited: started.elapsed(),
                };
            }
        } else if want.is_empty() {
            return Deliveries {
                delivered: 0,
                source: DeliverySource::Webhook,
                webhook_events: 0,
                waited: started.elapsed(),
            };
        } else if started.elapsed() >= WEBHOOK_GRACE {
            // No status webhook so far: read the outcomes back from the store.
            let pending: Vec<&str> = want
                .iter()
                .copied()
                .filter(|id| !from_store.contains(*id))
                .collect();
            let found: Vec<Option<String>> = futures::stream::iter(pending)
                .map(|id| async move {
                    (api.status_of(id).await.as_deref() == Some("delivered")).then(|| id.to_owned())
                })
                .buffer_unordered(32)
                .collect()
                .await;
            from_store.extend(found.into_iter().flatten());
            if from_store.len() == want.len() || Instant::now() >= deadline {
                return Deliveries {
                    delivered: from_store.len() as u64,
                    source: DeliverySource::Store,
                    webhook_events: 0,
                    waited: started.elapsed(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The opt-out step's result.
pub(super) enum OptOut {
    Passed,
    Skipped(String),
    Failed(String),
}

/// MO `STOP` from a recipient of the run, then a send to it must be refused
/// 422 `recipient_opted_out`.
pub(super) async fn opt_out_step(api: &Api, sim: &SimHandle, stats: &SendStats) -> OptOut {
    let Some(&(i, _)) = stats.accepted.iter().find(|(i, _)| !is_slow(*i)) else {
        return OptOut::Skipped("no accepted message on the fast campaign".into());
    };
    let (to, from) = (recipient(i), FAST_NUMBERS[(i % 2) as usize]);
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        sim.send_mo(&to[1..], &from[1..], "STOP"),
    )
    .await;
    match answer {
        Ok(CommandStatus::EsmeRok) => {}
        Ok(status) => {
            return OptOut::Skipped(format!(
                "MO not wired: the relay answered the carrier {}",
                status_name(status)
            ))
        }
        Err(_) => return OptOut::Skipped("MO not wired: no answer to the deliver_sm".into()),
    }
    match api
        .send(from, &to, &Kind::Gsm7.text(i), FAST_CAMPAIGN)
        .await
    {
        Outcome::Refused { key, .. } if key == "422 recipient_opted_out" => OptOut::Passed,
        Outcome::Refused { key, .. } => OptOut::Failed(format!(
            "after STOP the next send was refused {key}, not 422 recipient_opted_out"
        )),
        Outcome::Accepted { .. } => {
            OptOut::Failed("after STOP the next send was accepted (201)".into())
        }
        Outcome::Lost { why } => OptOut::Failed(format!("after STOP the next send: {why}")),
    }
}

/// `sms_conduit_` sample lines of one `/metrics` scrape.
pub(super) async fn scrape_metrics(url: &str) -> Result<usize, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let text = resp.text().await.map_err(|e| transport_kind(&e))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("sms_conduit_"))
        .count())
}

pub(super) fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}
