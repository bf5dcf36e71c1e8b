//! The summary whose totals decide the exit status.

use super::*;

pub(super) fn summarize(
    run: Run,
    clean_stop: bool,
    audit: Result<crate::audit::VerifyReport, crate::audit::VerifyError>,
    metrics_url: &str,
) -> Result<bool, DemoError> {
    let Run {
        stats,
        deliveries,
        opt_out,
        metrics_lines,
        sent,
    } = run;
    let accepted = stats.accepted.len() as u64;
    let refused: u64 = stats.refused.values().sum();
    let lost: u64 = stats.lost.values().sum();
    let join = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = |k| stats.kinds.get(&k).copied().unwrap_or(0);

    println!();
    println!("summary");
    println!("  sent             {sent}");
    println!(
        "  texts            {} GSM-7, {} UCS-2 with emoji, {} multi-segment",
        kind(Kind::Gsm7),
        kind(Kind::Ucs2),
        kind(Kind::Long)
    );
    println!(
        "  accepted         {accepted}  ({} segments; {})",
        stats.segments,
        join(&stats.encodings)
    );
    let source = match deliveries.source {
        DeliverySource::Webhook => format!(
            "message.status webhooks at the sink ({} events)",
            deliveries.webhook_events
        ),
        DeliverySource::Store => {
            "GET /v1/messages/{id}: no message.status webhook arrived".to_owned()
        }
    };
    println!("  delivered        {}  ({source})", deliveries.delivered);
    print_refusals(&stats, refused, &join);
    if lost > 0 {
        println!("  unaccounted      {lost}  ({})", join(&stats.lost));
    } else {
        println!("  unaccounted      0");
    }
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  throughput       {:.0} msg/s accepted ({:.0} answers/s)",
        accepted as f64 / secs,
        sent as f64 / secs
    );
    println!(
        "  latency          p50 {}  p99 {}  max {}",
        ms(stats.hist.value_at_quantile(0.5)),
        ms(stats.hist.value_at_quantile(0.99)),
        ms(stats.hist.max())
    );
    let opt_line = match &opt_out {
        OptOut::Passed => "STOP honoured: next send refused 422 recipient_opted_out".to_owned(),
        OptOut::Skipped(why) => format!("skipped ({why})"),
        OptOut::Failed(why) => format!("FAILED: {why}"),
    };
    println!("  opt-out          {opt_line}");
    let audit_ok = print_audit(&audit);
    match &metrics_lines {
        Ok(n) => println!("  metrics          {metrics_url} (scraped: {n} sms_conduit_ lines)"),
        Err(e) => println!("  metrics          {metrics_url} (scrape failed: {e})"),
    }
    if !clean_stop {
        println!("  stop             drain deadline passed with work in flight");
    }

    let ok = print_result(&Totals {
        sent,
        accepted,
        refused,
        lost,
        delivered: deliveries.delivered,
        audit_ok,
        opt_out_failed: matches!(opt_out, OptOut::Failed(_)),
    });
    Ok(ok)
}

/// The refusals by code, and why (the code, the campaign, the relay's own
/// detail).
fn print_refusals(
    stats: &SendStats,
    refused: u64,
    join: &dyn Fn(&BTreeMap<String, u64>) -> String,
) {
    if refused > 0 {
        println!("  refused by code  {refused}  ({})", join(&stats.refused));
        // Why: the code, the campaign and the relay's own detail.
        for ((key, campaign), (n, detail)) in &stats.reasons {
            let limit = if *campaign == SLOW_CAMPAIGN {
                format!(
                    " (the demo's deliberately slow campaign: segments_per_minute {SLOW_SEGMENTS_PER_MINUTE}, burst {})",
                    stats.slow_burst
                )
            } else {
                String::new()
            };
            println!("    why            {n} x {key} on {campaign}{limit}: \"{detail}\"");
        }
    } else {
        println!("  refused by code  0");
    }
}

/// The audit chain's line; whether it verified.
fn print_audit(audit: &Result<crate::audit::VerifyReport, crate::audit::VerifyError>) -> bool {
    match audit {
        Ok(r) => {
            let head = r.head.as_ref().map_or_else(
                || "empty".to_owned(),
                |h| format!("seq {} hash {}", h.seq, h.hash.get(..16).unwrap_or(&h.hash)),
            );
            let records = if r.count == 1 { "record" } else { "records" };
            println!("  audit chain      ok, {} {records}, head {head}", r.count);
            true
        }
        Err(e) => {
            println!("  audit chain      BROKEN: {e}");
            false
        }
    }
}

/// The run's totals that decide the exit status.
#[derive(Clone, Copy)]
struct Totals {
    sent: u64,
    accepted: u64,
    refused: u64,
    lost: u64,
    delivered: u64,
    audit_ok: bool,
    opt_out_failed: bool,
}

/// The result line; whether every message was accounted for.
fn print_result(t: &Totals) -> bool {
    let Totals {
        sent,
        accepted,
        refused,
        lost,
        delivered,
        audit_ok,
        opt_out_failed,
    } = *t;
    let accounted = lost == 0 && accepted + refused == sent && delivered == accepted;
    let ok = accounted && audit_ok && !opt_out_failed;
    println!();
    if ok {
        println!("result: ok, every message accounted for ({accepted} accepted and delivered + {refused} refused by code = {sent} sent)");
    } else {
        let mut why = Vec::new();
        if lost > 0 {
            why.push(format!("{lost} without a definite outcome"));
        }
        if accepted + refused + lost != sent {
            why.push(format!(
                "{} answers for {sent} sends",
                accepted + refused + lost
            ));
        }
        if delivered != accepted {
            why.push(format!(
                "{} of {accepted} accepted not delivered within {} s",
                accepted.saturating_sub(delivered),
                DELIVERY_WAIT.as_secs()
            ));
        }
        if !audit_ok {
            why.push("audit chain broken".into());
        }
        if opt_out_failed {
            why.push("opt-out not honoured".into());
        }
        println!("result: FAILED ({})", why.join("; "));
    }
    ok
}
