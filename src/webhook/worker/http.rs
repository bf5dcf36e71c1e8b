//! The HTTP side of one delivery: a client's [`Target`] (URL, secrets,
//! the rustls-backed HTTP client), one signed POST and what its failure
//! was, and [`EndpointHealth`], which logs a failing endpoint once per
//! failure series.
//!
//! The client is hyper-util's pooled client over hyper-rustls (ALPN h2 and
//! http/1.1, plain http only where config allows it: a loopback sidecar),
//! not reqwest: per webhook reqwest parsed the URL twice (its redirect
//! policy, with redirects off, and its response), cloned its default
//! headers and added ~10 allocations: 3–5% of the relay's CPU flat out by
//! profile, 0.87–0.96 of it replaced (BENCHMARKS.md, session 14). Here the
//! URL is parsed once, at build.
//!
//! Must not know: the outbox, the schedule or the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;

use super::super::sign::{sign_all, HEADER_NAME};
use super::super::{Options, WebhookError};
use super::{ms, now_ms};
use crate::config;
use crate::metrics::Metrics;
use crate::tls;
use crate::types::Secret;

/// Where and how to send one client's events.
pub(super) struct Target {
    uri: Uri,
    /// `Authorization: Basic` from the URL's user info, when it has one
    /// (reqwest, the client before, sent it so).
    basic: Option<HeaderValue>,
    pub(super) secret: Secret,
    /// The next secret during a rotation: both sign every request.
    pub(super) secret_next: Option<Secret>,
    http: Client<CertWatch, Chunks>,
    pub(super) concurrency: usize,
    client: String,
    metrics: Arc<Metrics>,
}

impl Target {
    pub(super) fn build(
        client: &str,
        hook: &config::Webhook,
        opts: &Options,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, WebhookError> {
        let bad_url = || WebhookError::Url {
            client: client.to_owned(),
        };
        // Config checked the URL (url's parser, WHATWG); http's parser
        // takes what goes on the wire, without user info or fragment.
        let mut url = url::Url::parse(&hook.url).map_err(|_| bad_url())?;
        let basic = basic_auth(&url);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_fragment(None);
        let uri: Uri = url.as_str().parse().map_err(|_| bad_url())?;
        let tls = tls::client_config(hook.ca_file.as_deref(), &[]).map_err(|source| {
            WebhookError::Tls {
                client: client.to_owned(),
                source,
            }
        })?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(opts.connect_timeout));
        // hyper-rustls sets the ALPN list itself (h2, http/1.1) and asserts
        // the config came without one.
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let connector = CertWatch {
            inner: https,
            client: client.into(),
            metrics: metrics.clone(),
        };
        // No timeout in the client: `post` bounds each request with one
        // timer of its own. No proxy from the environment, no redirects
        // (this client follows none).
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Target {
            uri,
            basic,
            secret: hook.secret.clone(),
            secret_next: hook.secret_next.clone(),
            http,
            concurrency: usize::try_from(hook.concurrency).unwrap_or(1).max(1),
            client: client.to_owned(),
            metrics: metrics.clone(),
        })
    }
}

/// The `Authorization: Basic` value of a URL's user info, if any.
fn basic_auth(url: &url::Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or(""))
    );
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut v = HeaderValue::from_str(&value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The connector: hyper-rustls's, and on each new TLS connection the
/// endpoint's certificate expiry into
/// `tls_cert_expiry{role="webhook",name=<client>}`. A connection keeps its
/// certificate, so once per connection is as current as once per answer.
/// The series appears only once a certificate was seen: a series created
/// at 0 would read as long expired.
#[derive(Clone)]
struct CertWatch {
    inner: HttpsConnector<HttpConnector>,
    client: Arc<str>,
    metrics: Arc<Metrics>,
}

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for CertWatch {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        Box::pin(async move {
            let stream = connecting.await?;
            if let MaybeHttpsStream::Https(tls) = &stream {
                let (_, session) = tls.inner().get_ref();
                if let Some(t) = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| tls::not_after_unix(leaf))
                {
                    metrics
                        .tls_cert_expiry
                        .with_label_values(&["webhook", &client])
                        .set(t);
                }
            }
            Ok(stream)
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

/// The errors `e` wraps, itself first.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// A transport error as text with its causes (hyper's errors carry no URL,
/// which may hold a token).
fn reason(e: &hyper_util::client::legacy::Error) -> String {
    chain(e)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Whether connecting ran out of `connect_timeout`.
fn timed_out(e: &hyper_util::client::legacy::Error) -> bool {
    chain(e).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

static UA: HeaderValue =
    HeaderValue::from_static(concat!("sms-conduit/", env!("CARGO_PKG_VERSION")));
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// One signed POST of `body`; Ok on 2xx within `timeout`.
pub(super) async fn post(target: &Target, body: Bytes, timeout: Duration) -> Result<(), Failure> {
    let t = now_ms() / 1000;
    let signature = match &target.secret_next {
        None => sign_all(&[target.secret.expose()], t, &body),
        Some(next) => sign_all(&[target.secret.expose(), next.expose()], t, &body),
    };
    // The string's bytes, taken rather than copied.
    let mut signature = HeaderValue::from_maybe_shared(Bytes::from(signature))
        .map_err(|_| Failure::Transport("signature header".to_owned()))?;
    // Never indexed (HPACK, RFC 7541 §7.1.3): a value new on every request
    // would only churn the HTTP/2 header table on both sides, pushing out
    // the entries that repeat (path, content type, user agent).
    signature.set_sensitive(true);
    let started = std::time::Instant::now();
    let send = async {
        let mut retries = 0;
        loop {
            let mut req = Request::post(target.uri.clone())
                .header(CONTENT_TYPE, JSON.clone())
                .header(USER_AGENT, UA.clone())
                .header(HEADER_NAME.clone(), signature.clone());
            if let Some(b) = &target.basic {
                req = req.header(AUTHORIZATION, b.clone());
            }
            let req = req
                .body(Chunks::new(body.clone()))
                .map_err(|e| Failure::Transport(e.to_string()))?;
            match target.http.request(req).await {
                Err(e) if retries < UNPROCESSED_RETRIES && never_processed(&e) => retries += 1,
                Err(e) if timed_out(&e) => return Err(Failure::Timeout),
                Err(e) => return Err(Failure::Transport(reason(&e))),
                Ok(resp) => return Ok(resp),
            }
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let resp = match tokio::time::timeout_at(deadline, send).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(r) => r?,
    };
    target
        .metrics
        .webhook_latency
        .with_label_values(&[&target.client])
        .observe(started.elapsed().as_secs_f64());
    let status = resp.status();
    // The status is the answer; the body is read only so that the
    // connection stays usable (see `drain`), within what is left of the
    // request's time: a body that stalls loses the connection, not the 2xx.
    let body = resp.into_body();
    if !hyper::body::Body::is_end_stream(&body) {
        let _ = tokio::time::timeout_at(deadline, drain(body)).await;
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Status(status.as_u16()))
    }
}

/// The most of an answer's body that is read (and dropped) to keep its
/// connection: an HTTP/1.1 connection whose body was left unread is
/// closed, and the next webhook pays a new TCP and TLS handshake (seen: an
/// endpoint answering 60 kB took 24 connections for 24 requests, against
/// 2–3 when its body was read); an h2 stream left unread is reset.
const DRAIN_MAX: usize = 64 * 1024;

/// Reads `body` to its end, or until [`DRAIN_MAX`] bytes or an error.
async fn drain(mut body: hyper::body::Incoming) {
    use http_body_util::BodyExt as _;
    let mut left = DRAIN_MAX;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            match left.checked_sub(data.len()) {
                Some(l) => left = l,
                None => return,
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
/// once (hyper's pool retries only a request that never left).
const UNPROCESSED_RETRIES: u32 = 2;

/// Whether the endpoint's HTTP/2 server said it never processed the
/// request, so sending it again at once is safe (RFC 9113 §8.7): it
/// refused the stream (REFUSED_STREAM), or it is shutting down gracefully
/// (GOAWAY with NO_ERROR) and the stream was past its last one. The same
/// test reqwest made before its own retry.
fn never_processed(e: &hyper_util::client::legacy::Error) -> bool {
    chain(e)
        .find_map(|err| err.downcast_ref::<h2::Error>())
        .is_some_and(|h2e| {
            let refused = h2e.is_reset() && h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
            let going_away = h2e.is_go_away() && h2e.reason() == Some(h2::Reason::NO_ERROR);
            h2e.is_remote() && (refused || going_away)
        })
}

/// A request body handed to the HTTP client in pieces of at most
/// [`Chunks::MAX`] bytes.
///
/// Why by hand: h2 (0.4, under hyper) writes a DATA frame of
/// 256 bytes or more without copying it (`FramedWrite`'s
/// `CHAIN_THRESHOLD`) and so must flush before it takes the next frame:
/// every webhook (~300 bytes of JSON) left in a socket write, and a TLS
/// record, of its own, even when the worker started several at once.
/// Smaller frames are copied into h2's buffer, so the requests started
/// together (the worker takes new events every few ms while they keep
/// coming: `INGEST_EVERY`) leave in one write. Measured at a steady 1,000
/// msg/s: 1.16 → 0.32 webhook writes per message, 0.94 of the relay's CPU
/// (BENCHMARKS.md, session 12). hyper does not let us set that threshold.
/// The bytes on the wire are the same JSON (the receiver sees one body of
/// the declared length); an MO body's owner (`WipeOnDrop`) is shared by the
/// pieces and wiped when the last is dropped. A stream the endpoint refused
/// is sent again by `post` itself ([`never_processed`]).
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
