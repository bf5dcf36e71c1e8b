//! Prometheus metrics, declared in one place (SPEC §7).
//!
//! Owns: every metric family and its labels. Label values come from config
//! (carrier, peer, campaign, client names) or from small fixed sets in code
//! (PDU command names, status names, outcomes) — never from a request, so a
//! client cannot blow up the series count and no number or text can reach a
//! label.
//!
//! Each [`Metrics`] has its own registry, so several relays can run in one
//! test process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metric families of the appliance.
pub struct Metrics {
    registry: Registry,
    /// Messages by direction (`mt`, `mo`), outcome and carrier.
    pub messages: IntCounterVec,
    /// Segments by direction and carrier.
    pub segments: IntCounterVec,
    /// Refusals by campaign and code (`rate_limited`, `daily_cap_reached`, …).
    pub refusals: IntCounterVec,
    /// End-to-end latency of an MT, request in to 201 out, by outcome class.
    pub latency: HistogramVec,
    /// SMPP sessions by link (carrier or peer name) and state.
    pub smpp_sessions: IntGaugeVec,
    /// Outstanding requests per link.
    pub smpp_window: IntGaugeVec,
    /// PDUs by link, command, direction (`in`/`out`) and command status.
    pub smpp_pdus: IntCounterVec,
    /// Failed binds by link and reason.
    pub smpp_bind_failures: IntCounterVec,
    /// Peers' sessions bound to our SMPP server, by peer name (outbound
    /// binds to carriers are in `smpp_sessions`).
    pub smpp_peer_sessions: IntGaugeVec,
    /// Connections open on the SMPP server's listeners, bound or not.
    pub smpp_server_connections: IntGauge,
    /// Connections the SMPP server closed at accept, by reason
    /// (`max_connections`, `per_address`).
    pub smpp_connections_refused: IntCounterVec,
    /// Webhook attempts by client and outcome.
    pub webhook_attempts: IntCounterVec,
    /// Status events waiting in the durable outbox.
    pub outbox_depth: IntGauge,
    /// Age in seconds of the oldest status event waiting for a client (0
    /// when none waits): a stuck webhook endpoint shows here before the
    /// depth grows.
    pub outbox_oldest_age: IntGaugeVec,
    /// Outbound sessions each carrier is configured with (`binds`), beside
    /// `smpp_sessions{state="bound"}` so an alert can compare the two.
    /// Carriers only: inbound peers have no configured count.
    pub smpp_configured_sessions: IntGaugeVec,
    /// Parts of concatenated MOs held for reassembly, by `kind` (`parts`,
    /// `bytes`).
    pub mo_parts_held: IntGaugeVec,
    /// Audit records written.
    pub audit_records: IntCounter,
    /// Sequence number of the audit chain's head (its record count minus
    /// one, before any pruning): an operator compares it with exports.
    pub audit_head_seq: IntGauge,
    /// Store commit latency (one commit carries many writes).
    pub store_commit: Histogram,
    /// Writes per store commit.
    pub store_batch: Histogram,
    /// Store commits that failed (a full disk, an I/O error): each one
    /// answered every write of its batch with an error.
    pub store_commit_failures: IntCounter,
    /// API requests by route template and status code.
    pub api_requests: IntCounterVec,
    /// Failed API authentications.
    pub auth_failures: IntCounter,
    /// Fleet mode: 1 while the shared state (Redis) answers, 0 when its last
    /// call failed. Stays 1 on a single appliance.
    pub shared_state_up: IntGauge,
    /// Fleet mode: failed shared-state calls by operation (`admit`,
    /// `refund`, `opt_out`, `index`, …).
    pub shared_state_errors: IntCounterVec,
    /// Fleet mode: shared-state call latency by operation.
    pub shared_state_latency: HistogramVec,
    /// Seconds until each API key's `not_after` (negative once past), by
    /// client id and key index (its position in `key_sha256`), never the
    /// key; only keys with a `not_after` have a series.
    pub api_key_expiry: IntGaugeVec,
    /// Unix time of the `notAfter` of a TLS certificate chain (its earliest
    /// one), by `role` and `name`: `server`/`tls` (ours, `[tls] cert_file`,
    /// served by every TLS listener), `carrier`/carrier name (the chain the
    /// carrier's SMSC presented at its last handshake), `webhook`/client id
    /// (the leaf the client's webhook endpoint presented at its last
    /// answered request). A series appears once the certificate was read.
    pub tls_cert_expiry: IntGaugeVec,
    /// Each brand's `daily_cap` (brands with a cap only).
    pub brand_daily_cap: IntGaugeVec,
    /// Segments counted against each capped brand's daily cap on its
    /// current local day (the shared counter in fleet mode), refreshed
    /// every [`CAP_USAGE_EVERY`].
    pub brand_daily_segments: IntGaugeVec,
    /// Each campaign's `segments_per_minute` (its rate limit).
    pub campaign_rate_limit: IntGaugeVec,
    /// Segments of MTs the carrier accepted, by campaign: with
    /// `campaign_rate_limit`, the share of the limit in use.
    pub campaign_segments: IntCounterVec,
    /// submit_sm to its submit_sm_resp (the session's queue included, the
    /// pacer's wait not), by carrier.
    pub submit_latency: HistogramVec,
    /// An MT's first submit to the receipt that decided it, by carrier.
    pub receipt_latency: HistogramVec,
    /// Messages a receipt decided with a carrier error code, by carrier and
    /// code (the receipt's three-digit `err:` or the network error code;
    /// anything else is `other`: the label set stays bounded).
    pub receipt_errors: IntCounterVec,
    /// One webhook POST, request to status line, by client.
    pub webhook_latency: HistogramVec,
}

/// How often the cap-usage gauges are refreshed from the daily counters.
pub const CAP_USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition");
    r.register(Box::new(h.clone())).expect("unique metric name");
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    r.register(Box::new(h.clone())).expect("unique metric name");
    h
}

/// A receipt's error code as a bounded label: three ASCII digits, else
/// `other`.
pub fn error_label(code: &str) -> &str {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        code
    } else {
        "other"
    }
}

/// Latency buckets from 100 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

/// The API and the send path: requests, authentication, messages, refusals, limits and caps, certificates.
struct ApiFamilies {
    messages: IntCounterVec,
    segments: IntCounterVec,
    refusals: IntCounterVec,
    latency: HistogramVec,
    api_requests: IntCounterVec,
    auth_failures: IntCounter,
    api_key_expiry: IntGaugeVec,
    tls_cert_expiry: IntGaugeVec,
    brand_daily_cap: IntGaugeVec,
    brand_daily_segments: IntGaugeVec,
    campaign_rate_limit: IntGaugeVec,
    campaign_segments: IntCounterVec,
}

fn api_families(r: &Registry) -> ApiFamilies {
    ApiFamilies {
        messages: counter_vec(
            r,
            "sms_conduit_messages_total",
            "Messages by direction, outcome and carrier.",
            &["direction", "outcome", "carrier"],
        ),
        segments: counter_vec(
            r,
            "sms_conduit_segments_total",
            "Segments by direction and carrier.",
            &["direction", "carrier"],
        ),
        refusals: counter_vec(
            r,
            "sms_conduit_refusals_total",
            "Refused MT requests by campaign and code.",
            &["campaign", "code"],
        ),
        latency: histogram_vec(
            r,
            "sms_conduit_message_latency_seconds",
            "End-to-end MT latency, request received to answer sent.",
            &["outcome"],
            latency_buckets(),
        ),
        api_requests: counter_vec(
            r,
            "sms_conduit_api_requests_total",
            "API requests by route and status.",
            &["route", "status"],
        ),
        auth_failures: counter(
            r,
            "sms_conduit_auth_failures_total",
            "Failed API authentications.",
        ),
        api_key_expiry: gauge_vec(
            r,
            "sms_conduit_api_key_expiry_seconds",
            "Seconds until an API key's not_after (negative once expired), by client and key index.",
            &["client", "key"],
        ),
        tls_cert_expiry: gauge_vec(
            r,
            "sms_conduit_tls_cert_expiry_timestamp_seconds",
            "Unix time of the earliest notAfter of a TLS certificate chain, by role (server, carrier, webhook) and name.",
            &["role", "name"],
        ),
        brand_daily_cap: gauge_vec(
            r,
            "sms_conduit_brand_daily_cap_segments",
            "A brand's daily segment cap (brands with a cap only).",
            &["brand"],
        ),
        brand_daily_segments: gauge_vec(
            r,
            "sms_conduit_brand_daily_segments",
            "Segments counted against a capped brand's daily cap on its current local day.",
            &["brand"],
        ),
        campaign_rate_limit: gauge_vec(
            r,
            "sms_conduit_campaign_rate_limit_segments_per_minute",
            "A campaign's segments_per_minute rate limit.",
            &["campaign"],
        ),
        campaign_segments: counter_vec(
            r,
            "sms_conduit_campaign_segments_total",
            "Segments of MTs accepted by a carrier, by campaign.",
            &["campaign"],
        ),
    }
}

/// SMPP: sessions, windows, PDUs, binds, the server's connections, MO reassembly, submit and receipt latency.
struct SmppFamilies {
    smpp_sessions: IntGaugeVec,
    smpp_window: IntGaugeVec,
    smpp_pdus: IntCounterVec,
    smpp_bind_failures: IntCounterVec,
    smpp_peer_sessions: IntGaugeVec,
    smpp_server_connections: IntGauge,
    smpp_connections_refused: IntCounterVec,
    smpp_configured_sessions: IntGaugeVec,
    mo_parts_held: IntGaugeVec,
    submit_latency: HistogramVec,
    receipt_latency: HistogramVec,
    receipt_errors: IntCounterVec,
}

fn smpp_families(r: &Registry) -> SmppFamilies {
    SmppFamilies {
        smpp_sessions: gauge_vec(
            r,
            "sms_conduit_smpp_sessions",
            "SMPP sessions by link and state.",
            &["link", "state"],
        ),
        smpp_window: gauge_vec(
            r,
            "sms_conduit_smpp_window_in_use",
            "Outstanding SMPP requests by link.",
            &["link"],
        ),
        smpp_pdus: counter_vec(
            r,
            "sms_conduit_smpp_pdus_total",
            "SMPP PDUs by link, command, direction and status.",
            &["link", "command", "direction", "status"],
        ),
        smpp_bind_failures: counter_vec(
            r,
            "sms_conduit_smpp_bind_failures_total",
            "Failed SMPP binds by link and reason.",
            &["link", "reason"],
        ),
        smpp_peer_sessions: gauge_vec(
            r,
            "sms_conduit_smpp_peer_sessions",
            "Peers' sessions bound to our SMPP server, by peer.",
            &["peer"],
        ),
        smpp_server_connections: gauge(
            r,
            "sms_conduit_smpp_server_connections",
            "Connections open on the SMPP server's listeners, bound or not.",
        ),
        smpp_connections_refused: counter_vec(
            r,
            "sms_conduit_smpp_connections_refused_total",
            "Connections the SMPP server closed at accept, by reason.",
            &["reason"],
        ),
        smpp_configured_sessions: gauge_vec(
            r,
            "sms_conduit_smpp_configured_sessions",
            "Outbound SMPP sessions configured per carrier (binds).",
            &["link"],
        ),
        mo_parts_held: gauge_vec(
            r,
            "sms_conduit_mo_parts_held",
            "Parts of concatenated MOs held for reassembly (kind: parts, bytes).",
            &["kind"],
        ),
        submit_latency: histogram_vec(
            r,
            "sms_conduit_submit_seconds",
            "submit_sm to submit_sm_resp by carrier (the session's queue included, pacing not).",
            &["carrier"],
            latency_buckets(),
        ),
        receipt_latency: histogram_vec(
            r,
            "sms_conduit_receipt_seconds",
            "An MT's submit to the receipt that decided it, by carrier.",
            &["carrier"],
            vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
            ],
        ),
        receipt_errors: counter_vec(
            r,
            "sms_conduit_receipt_errors_total",
            "MTs a receipt decided with a carrier error code, by carrier and code (three digits, else other).",
            &["carrier", "error"],
        ),
    }
}

/// The store, the audit log and the shared state.
struct StoreFamilies {
    audit_records: IntCounter,
    audit_head_seq: IntGauge,
    store_commit: Histogram,
    store_batch: Histogram,
    store_commit_failures: IntCounter,
    shared_state_up: IntGauge,
    shared_state_errors: IntCounterVec,
    shared_state_latency: HistogramVec,
}

fn store_families(r: &Registry) -> StoreFamilies {
    StoreFamilies {
        audit_records: counter(
            r,
            "sms_conduit_audit_records_total",
            "Audit records written.",
        ),
        audit_head_seq: gauge(
            r,
            "sms_conduit_audit_head_seq",
            "Sequence number of the audit chain head.",
        ),
        store_commit: histogram(
            r,
            "sms_conduit_store_commit_seconds",
            "Store commit latency.",
            latency_buckets(),
        ),
        store_batch: histogram(
            r,
            "sms_conduit_store_commit_batch_size",
            "Writes carried by one store commit.",
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        ),
        store_commit_failures: counter(
            r,
            "sms_conduit_store_commit_failures_total",
            "Store commits that failed.",
        ),
        shared_state_up: {
            let g = gauge(
                r,
                "sms_conduit_shared_state_up",
                "1 while the shared state (Redis in fleet mode) answers.",
            );
            g.set(1);
            g
        },
        shared_state_errors: counter_vec(
            r,
            "sms_conduit_shared_state_errors_total",
            "Failed shared-state (Redis) calls by operation.",
            &["op"],
        ),
        shared_state_latency: histogram_vec(
            r,
            "sms_conduit_shared_state_seconds",
            "Shared-state (Redis) call latency by operation.",
            &["op"],
            latency_buckets(),
        ),
    }
}

/// Webhook delivery and the outbox.
struct WebhookFamilies {
    webhook_attempts: IntCounterVec,
    outbox_depth: IntGauge,
    outbox_oldest_age: IntGaugeVec,
    webhook_latency: HistogramVec,
}

fn webhook_families(r: &Registry) -> WebhookFamilies {
    WebhookFamilies {
        webhook_attempts: counter_vec(
            r,
            "sms_conduit_webhook_attempts_total",
            "Webhook attempts by client and outcome.",
            &["client", "outcome"],
        ),
        outbox_depth: gauge(
            r,
            "sms_conduit_outbox_depth",
            "Status events waiting for webhook delivery.",
        ),
        outbox_oldest_age: gauge_vec(
            r,
            "sms_conduit_outbox_oldest_age_seconds",
            "Age of the oldest status event waiting for webhook delivery, by client (0 = none).",
            &["client"],
        ),
        webhook_latency: histogram_vec(
            r,
            "sms_conduit_webhook_seconds",
            "One webhook POST, request to status line, by client.",
            &["client"],
            latency_buckets(),
        ),
    }
}

impl Metrics {
    /// Creates and registers every family. Panics only on a programming error
    /// in the static definitions above (caught by the unit test).
    pub fn new() -> Self {
        let r = Registry::new_custom(None, None).expect("empty registry");
        let build = IntGaugeVec::new(
            Opts::new(
                "sms_conduit_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).expect("unique metric name");
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Registration fails only if /proc is unreadable at start; the
            // appliance still runs without process metrics then.
            let _ = r.register(Box::new(pc));
        }
        let ApiFamilies {
            messages,
            segments,
            refusals,
            latency,
            api_requests,
            auth_failures,
            api_key_expiry,
            tls_cert_expiry,
            brand_daily_cap,
            brand_daily_segments,
            campaign_rate_limit,
            campaign_segments,
        } = api_families(&r);
        let SmppFamilies {
            smpp_sessions,
            smpp_window,
            smpp_pdus,
            smpp_bind_failures,
            smpp_peer_sessions,
            smpp_server_connections,
            smpp_connections_refused,
            smpp_configured_sessions,
            mo_parts_held,
            submit_latency,
            receipt_latency,
            receipt_errors,
        } = smpp_families(&r);
        let StoreFamilies {
            audit_records,
            audit_head_seq,
            store_commit,
            store_batch,
            store_commit_failures,
            shared_state_up,
            shared_state_errors,
            shared_state_latency,
        } = store_families(&r);
        let WebhookFamilies {
            webhook_attempts,
            outbox_depth,
            outbox_oldest_age,
            webhook_latency,
        } = webhook_families(&r);
        Metrics {
            messages,
            segments,
            refusals,
            latency,
            api_requests,
            auth_failures,
            api_key_expiry,
            tls_cert_expiry,
            brand_daily_cap,
            brand_daily_segments,
            campaign_rate_limit,
            campaign_segments,
            smpp_sessions,
            smpp_window,
            smpp_pdus,
            smpp_bind_failures,
            smpp_peer_sessions,
            smpp_server_connections,
            smpp_connections_refused,
            smpp_configured_sessions,
            mo_parts_held,
            submit_latency,
            receipt_latency,
            receipt_errors,
            audit_records,
            audit_head_seq,
            store_commit,
            store_batch,
            store_commit_failures,
            shared_state_up,
            shared_state_errors,
            shared_state_latency,
            webhook_attempts,
            outbox_depth,
            outbox_oldest_age,
            webhook_latency,
            registry: r,
        }
    }

    /// The registry, for collectors added by other modules.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_stay_bounded() {
        assert_eq!(error_label("001"), "001");
        assert_eq!(error_label("1"), "other");
        assert_eq!(error_label("abc"), "other");
        assert_eq!(error_label("0012"), "other");
    }

    #[test]
    fn families_register_and_render() {
        let m = Metrics::new();
        m.messages
            .with_label_values(&["mt", "accepted", "carrier-a"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("sms_conduit_build_info"));
        assert!(text.contains("sms_conduit_messages_total{carrier=\"carrier-a\",direction=\"mt\",outcome=\"accepted\"} 1"));
    }
}
