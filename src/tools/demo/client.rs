//! The demo's "clinic app": the HTTPS client and the send loop.

use super::*;

/// What one request came back with.
pub(super) enum Outcome {
    Accepted {
        id: String,
        encoding: String,
        segments: u64,
    },
    /// A problem document with a definite refusal `code`; `detail` is the
    /// relay's own sentence (a fixed phrase, never a text or a number).
    Refused { key: String, detail: String },
    /// No definite outcome: transport error, no code, or `carrier_timeout`.
    Lost { why: String },
}

pub(super) struct SendStats {
    pub(super) accepted: Vec<(u64, String)>,
    pub(super) encodings: BTreeMap<String, u64>,
    pub(super) segments: u64,
    pub(super) refused: BTreeMap<String, u64>,
    /// Per `(status code, campaign)`: how many, and the first refusal's
    /// `detail`, so the summary can say why.
    pub(super) reasons: BTreeMap<(String, &'static str), (u64, String)>,
    /// The slow campaign's burst in this run (see [`slow_burst`]).
    pub(super) slow_burst: u64,
    pub(super) lost: BTreeMap<String, u64>,
    pub(super) kinds: BTreeMap<Kind, u64>,
    pub(super) hist: hdrhistogram::Histogram<u64>,
    pub(super) elapsed: Duration,
}

pub(super) fn new_hist() -> Result<hdrhistogram::Histogram<u64>, DemoError> {
    hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| DemoError::Step(format!("histogram: {e}")))
}

/// The HTTPS client of the demo's "clinic app".
pub(super) struct Api {
    pub(super) client: reqwest::Client,
    pub(super) base: String,
    pub(super) key: String,
}

impl Api {
    pub(super) fn new(cert_pem: &str, api: SocketAddr, key: String) -> Result<Api, DemoError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Api {
            client,
            base: format!("https://127.0.0.1:{}", api.port()),
            key,
        })
    }

    pub(super) async fn wait_ready(&self, within: Duration) -> Result<(), DemoError> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!(
                    "{} {}",
                    r.status().as_u16(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => transport_kind(&e),
            };
            if Instant::now() >= deadline {
                return Err(DemoError::Step(format!(
                    "/readyz did not become ready within {} s: {last}",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn send(&self, from: &str, to: &str, text: &str, campaign: &str) -> Outcome {
        let body = serde_json::json!({
            "from": from,
            "to": to,
            "text": text,
            "campaign_id": campaign,
        });
        let resp = match self
            .client
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Lost {
                    why: transport_kind(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let json: Option<serde_json::Value> = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) => {
                return Outcome::Lost {
                    why: format!("{status} {}", transport_kind(&e)),
                }
            }
        };
        let field = |k: &str| {
            json.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        if status == 201 {
            return match field("id") {
                Some(id) => Outcome::Accepted {
                    id,
                    encoding: field("encoding").unwrap_or_else(|| "?".into()),
                    segments: json
                        .as_ref()
                        .and_then(|v| v.get("segments"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                },
                None => Outcome::Lost {
                    why: "201 without an id".into(),
                },
            };
        }
        match field("code") {
            // The carrier may or may not have taken it: not a definite outcome.
            Some(code) if code == "carrier_timeout" => Outcome::Lost {
                why: format!("{status} {code}"),
            },
            Some(code) => Outcome::Refused {
                key: format!("{status} {code}"),
                detail: field("detail").unwrap_or_default(),
            },
            None => Outcome::Lost {
                why: format!("{status} without a problem code"),
            },
        }
    }

    /// `status` of `GET /v1/messages/{id}`, if it could be read.
    pub(super) async fn status_of(&self, id: &str) -> Option<String> {
        let r = self
            .client
            .get(format!("{}/v1/messages/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v.get("status")?.as_str().map(str::to_owned)
    }
}

/// A transport error's kind, without URLs or bodies.
pub(super) fn transport_kind(e: &reqwest::Error) -> String {
    let k = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    };
    k.to_owned()
}

pub(super) fn progress_bar(n: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled || !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stdout());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  sending {bar:40.cyan/blue} {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub(super) struct Worker {
    pub(super) accepted: Vec<(u64, String)>,
    pub(super) encodings: BTreeMap<String, u64>,
    pub(super) segments: u64,
    pub(super) refused: BTreeMap<String, u64>,
    pub(super) reasons: BTreeMap<(String, &'static str), (u64, String)>,
    pub(super) lost: BTreeMap<String, u64>,
    pub(super) kinds: BTreeMap<Kind, u64>,
    pub(super) hist: hdrhistogram::Histogram<u64>,
}

pub(super) async fn send_all(api: Arc<Api>, opts: &DemoOptions) -> Result<SendStats, DemoError> {
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(opts.messages, opts.progress);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (api, next, bar, n) = (api.clone(), next.clone(), bar.clone(), opts.messages);
        let mut w = Worker {
            accepted: Vec::new(),
            encodings: BTreeMap::new(),
            segments: 0,
            refused: BTreeMap::new(),
            reasons: BTreeMap::new(),
            lost: BTreeMap::new(),
            kinds: BTreeMap::new(),
            hist: new_hist()?,
        };
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let kind = Kind::of(i);
                *w.kinds.entry(kind).or_default() += 1;
                let (from, campaign) = if is_slow(i) {
                    (SLOW_NUMBER, SLOW_CAMPAIGN)
                } else {
                    (FAST_NUMBERS[(i % 2) as usize], FAST_CAMPAIGN)
                };
                let text = kind.text(i);
                let t0 = Instant::now();
                let outcome = api.send(from, &recipient(i), &text, campaign).await;
                drop(text);
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = w.hist.record(us.max(1));
                match outcome {
                    Outcome::Accepted {
                        id,
                        encoding,
                        segments,
                    } => {
                        w.accepted.push((i, id));
                        *w.encodings.entry(encoding).or_default() += 1;
                        w.segments += segments;
                    }
                    Outcome::Refused { key, detail } => {
                        let r = w
                            .reasons
                            .entry((key.clone(), campaign))
                            .or_insert((0, detail));
                        r.0 += 1;
                        *w.refused.entry(key).or_default() += 1;
                    }
                    Outcome::Lost { why } => *w.lost.entry(why).or_default() += 1,
                }
                bar.inc(1);
            }
            w
        }));
    }
    let mut stats = SendStats {
        accepted: Vec::new(),
        encodings: BTreeMap::new(),
        segments: 0,
        refused: BTreeMap::new(),
        reasons: BTreeMap::new(),
        slow_burst: slow_burst(opts.messages),
        lost: BTreeMap::new(),
        kinds: BTreeMap::new(),
        hist: new_hist()?,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let w = t
            .await
            .map_err(|e| DemoError::Step(format!("a send task failed: {e}")))?;
        stats.accepted.extend(w.accepted);
        merge(&mut stats.encodings, w.encodings);
        stats.segments += w.segments;
        merge(&mut stats.refused, w.refused);
        for (k, (n, detail)) in w.reasons {
            stats.reasons.entry(k).or_insert((0, detail)).0 += n;
        }
        merge(&mut stats.lost, w.lost);
        merge(&mut stats.kinds, w.kinds);
        stats
            .hist
            .add(&w.hist)
            .map_err(|e| DemoError::Step(format!("histogram: {e}")))?;
    }
    stats.elapsed = started.elapsed();
    bar.finish_and_clear();
    stats.accepted.sort_unstable();
    Ok(stats)
}

pub(super) fn merge<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}
