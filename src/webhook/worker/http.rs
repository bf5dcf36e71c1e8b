//! The HTTP side of one delivery: a client's [`Target`] (URL, secrets,
//! the rustls-backed HTTP client), one signed POST and what its failure
//! was, and [`EndpointHealth`], which logs a failing endpoint once per
//! failure series.
//!
//! Must not know: the outbox, the schedule or the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::super::sign::{sign_all, HEADER};
use super::super::{Options, WebhookError};
use super::{ms, now_ms, ALPN};
use crate::config;
use crate::metrics::Metrics;
use crate::tls;
use crate::types::Secret;

/// Where and how to send one client's events.
pub(super) struct Target {
    pub(super) url: reqwest::Url,
    pub(super) secret: Secret,
    /// The next secret during a rotation: both sign every request.
    pub(super) secret_next: Option<Secret>,
    pub(super) http: reqwest::Client,
    pub(super) concurrency: usize,
    /// For `tls_cert_expiry{role="webhook",name=<client>}`, set from the
    /// certificate the endpoint presents (read from each answered request:
    /// reqwest hands it over with the response, no extra connection). The
    /// series appears only once a certificate was seen: a series created
    /// at 0 would read as long expired.
    pub(super) client: String,
    pub(super) metrics: Arc<Metrics>,
    /// Unix ms from which the next answer's certificate is read.
    pub(super) cert_checked_ms: AtomicU64,
}

/// How often a webhook endpoint's certificate is read for its expiry.
const CERT_CHECK_EVERY_MS: u64 = 60_000;

impl Target {
    pub(super) fn build(
        client: &str,
        hook: &config::Webhook,
        opts: &Options,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(&hook.url).map_err(|_| WebhookError::Url {
            client: client.to_owned(),
        })?;
        let tls = tls::client_config(hook.ca_file.as_deref(), ALPN).map_err(|source| {
            WebhookError::Tls {
                client: client.to_owned(),
                source,
            }
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(opts.connect_timeout)
            // No request timeout here or on the request: `post` bounds each
            // request with one timer of its own (a reqwest timeout would add
            // a second timer, and a body wrapper, to every webhook).
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("sms-conduit/", env!("CARGO_PKG_VERSION")))
            .tls_info(true)
            .build()
            .map_err(|e| WebhookError::Client {
                client: client.to_owned(),
                reason: e.without_url().to_string(),
            })?;
        Ok(Target {
            url,
            secret: hook.secret.clone(),
            secret_next: hook.secret_next.clone(),
            http,
            concurrency: usize::try_from(hook.concurrency).unwrap_or(1).max(1),
            client: client.to_owned(),
            metrics: metrics.clone(),
            cert_checked_ms: AtomicU64::new(0),
        })
    }
}

/// Why one POST did not get a 2xx.
#[derive(Debug)]
pub(super) enum Failure {
    Status(u16),
    Timeout,
    /// Connecting, TLS, or the exchange broke; the reason has no URL.
    Transport(String),
}

impl Failure {
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Failure::Status(_) => "http_error",
            Failure::Timeout => "timeout",
            Failure::Transport(_) => "connect_error",
        }
    }

    pub(super) fn into_error(self, client: &str, after: Duration) -> WebhookError {
        let client = client.to_owned();
        match self {
            Failure::Status(status) => WebhookError::Status { client, status },
            Failure::Timeout => WebhookError::Timeout { client, after },
            Failure::Transport(reason) => WebhookError::Unreachable { client, reason },
        }
    }
}

/// A transport error as text, without the URL (it may hold a token).
fn reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// One signed POST of `body`; Ok on 2xx within `timeout`.
pub(super) async fn post(target: &Target, body: Bytes, timeout: Duration) -> Result<(), Failure> {
    let t = now_ms() / 1000;
    let signature = match &target.secret_next {
        None => sign_all(&[target.secret.expose()], t, &body),
        Some(next) => sign_all(&[target.secret.expose(), next.expose()], t, &body),
    };
    // The response body is not read: the status is the answer. Dropping the
    // response resets an h2 stream, or closes an HTTP/1.1 connection whose
    // body is still coming.
    let started = std::time::Instant::now();
    let send = async {
        let mut retries = 0;
        loop {
            let req = target
                .http
                .post(target.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(HEADER, signature.as_str())
                .body(reqwest::Body::wrap(Chunks::new(body.clone())));
            match req.send().await {
                Err(e) if retries < UNPROCESSED_RETRIES && never_processed(&e) => retries += 1,
                r => return r,
            }
        }
    };
    match tokio::time::timeout(timeout, send).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) if e.is_timeout() => Err(Failure::Timeout),
        Ok(Err(e)) => Err(Failure::Transport(reason(e))),
        Ok(Ok(resp)) => {
            target
                .metrics
                .webhook_latency
                .with_label_values(&[&target.client])
                .observe(started.elapsed().as_secs_f64());
            // The endpoint's certificate is parsed at most once a minute,
            // not per event.
            let now = now_ms();
            let due = target.cert_checked_ms.load(Ordering::Relaxed);
            let check = now >= due
                && target
                    .cert_checked_ms
                    .compare_exchange(
                        due,
                        now + CERT_CHECK_EVERY_MS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok();
            if let Some(t) = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .filter(|_| check)
                .and_then(reqwest::tls::TlsInfo::peer_certificate)
                .and_then(tls::not_after_unix)
            {
                target
                    .metrics
                    .tls_cert_expiry
                    .with_label_values(&["webhook", &target.client])
                    .set(t);
            }
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(Failure::Status(resp.status().as_u16()))
            }
        }
    }
}

/// A run of failed requests to one client's endpoint, since its last 2xx.
struct Series {
    since_ms: u64,
    failures: u64,
}

/// Whether a client's endpoint is failing: a failure series is logged once,
/// when it starts (outcome, status, back-off), and once when it ends, not
/// per attempt (a down endpoint would flood the journal at `concurrency`
/// attempts per back-off).
#[derive(Default)]
pub(super) struct EndpointHealth {
    /// Held only to read or update the series; never across an await.
    series: Mutex<Option<Series>>,
}

impl EndpointHealth {
    /// Records a failed request; logs when it starts a series.
    pub(super) fn failed(&self, client: &str, failure: &Failure, retry_in: Option<Duration>) {
        let mut series = self.series.lock();
        if let Some(s) = series.as_mut() {
            s.failures = s.failures.saturating_add(1);
            return;
        }
        *series = Some(Series {
            since_ms: now_ms(),
            failures: 1,
        });
        drop(series);
        let status = match failure {
            Failure::Status(s) => Some(*s),
            _ => None,
        };
        let reason = match failure {
            Failure::Transport(r) => explain_transport(r),
            Failure::Timeout => "no answer within the request timeout".to_owned(),
            Failure::Status(s) => format!("answered HTTP {s}"),
        };
        tracing::warn!(
            client,
            outcome = failure.outcome(),
            status,
            retry_in_ms = retry_in.map(ms),
            reason = %reason,
            "webhook endpoint failing; status events wait in the outbox and are retried \
             with back-off (doubling, at most the back-off cap); logged once until it answers 2xx again"
        );
    }

    /// Records a 2xx; logs when it ends a series.
    pub(super) fn succeeded(&self, client: &str) {
        let Some(s) = self.series.lock().take() else {
            return;
        };
        tracing::info!(
            client,
            failed_requests = s.failures,
            failing_for_secs = now_ms().saturating_sub(s.since_ms) / 1000,
            "webhook endpoint answers 2xx again"
        );
    }
}

/// A transport error's reason, with what to do when the endpoint presents a
/// CA certificate as its own (webpki: CaUsedAsEndEntity).
fn explain_transport(reason: &str) -> String {
    if reason.contains("CaUsedAsEndEntity") {
        format!(
            "{reason}: the endpoint's certificate: {}",
            tls::CA_AS_LEAF_HINT
        )
    } else {
        reason.to_owned()
    }
}

/// How many times a request the endpoint never processed is sent again at
/// once (as reqwest does for a body it can clone; [`Chunks`] is not one).
const UNPROCESSED_RETRIES: u32 = 2;

/// Whether the endpoint's HTTP/2 server said it never processed the
/// request, so sending it again at once is safe (RFC 9113 §8.7): it
/// refused the stream (REFUSED_STREAM), or it is shutting down gracefully
/// (GOAWAY with NO_ERROR) and the stream was past its last one. The same
/// test reqwest makes before its own retry.
fn never_processed(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            let refused = h2e.is_reset() && h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
            let going_away = h2e.is_go_away() && h2e.reason() == Some(h2::Reason::NO_ERROR);
            return h2e.is_remote() && (refused || going_away);
        }
        src = err.source();
    }
    false
}

/// A request body handed to the HTTP client in pieces of at most
/// [`Chunks::MAX`] bytes.
///
/// Why by hand: h2 (0.4, under hyper and reqwest) writes a DATA frame of
/// 256 bytes or more without copying it (`FramedWrite`'s
/// `CHAIN_THRESHOLD`) and so must flush before it takes the next frame:
/// every webhook (~300 bytes of JSON) left in a socket write, and a TLS
/// record, of its own, even when the worker started several at once.
/// Smaller frames are copied into h2's buffer, so the requests started
/// together (the worker takes new events every few ms while they keep
/// coming: `INGEST_EVERY`) leave in one write. Measured at a steady 1,000
/// msg/s: 1.16 → 0.32 webhook writes per message, 0.94 of the relay's CPU
/// (BENCHMARKS.md, session 12). Neither reqwest nor hyper lets us set that
/// threshold, and reqwest's connection type cannot be wrapped. The bytes
/// on the wire are the same JSON (the receiver sees one body of the
/// declared length); an MO body's owner (`WipeOnDrop`) is shared by the
/// pieces and wiped when the last is dropped. reqwest cannot clone such a
/// body to retry a stream the endpoint refused: `post` does that itself
/// ([`never_processed`]).
struct Chunks {
    data: Bytes,
}

impl Chunks {
    /// Below h2's 256-byte threshold for writing a DATA frame uncopied.
    const MAX: usize = 255;

    fn new(data: Bytes) -> Self {
        Chunks { data }
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.data.len().min(Self::MAX);
        let piece = self.data.split_to(n);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::Chunks;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::Body;

    #[tokio::test]
    async fn a_body_goes_in_pieces_below_the_threshold_and_whole() {
        for len in [0usize, 1, 255, 256, 300, 511, 4096] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut body = Chunks::new(Bytes::from(data.clone()));
            assert_eq!(body.size_hint().exact(), Some(len as u64));
            assert_eq!(body.is_end_stream(), len == 0);
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                let piece = frame.unwrap().into_data().unwrap();
                assert!(
                    !piece.is_empty() && piece.len() <= Chunks::MAX,
                    "{len}: {}",
                    piece.len()
                );
                got.extend_from_slice(&piece);
            }
            assert_eq!(got, data);
            assert!(body.is_end_stream());
        }
    }
}
