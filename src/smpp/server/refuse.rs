//! The bind exchange's outcomes: the TLS handshake, peer authentication
//! (password, address allow-list, client-certificate pins, bind limits) and
//! the one way a failed bind is refused.

use super::*;

/// The TLS handshake of a `listen` connection (none on
/// `plaintext_listen`), within the bind deadline, and the SHA-256 of the
/// peer's certificate if it sent one. `None`: counted and closed.
pub(super) async fn handshake(
    inner: &Inner,
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    deadline: tokio::time::Instant,
) -> Option<(Box<dyn Io>, Option<[u8; 32]>)> {
    let Some(acceptor) = tls else {
        return Some((Box::new(stream), None));
    };
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let cert = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Sha256::digest(c.as_ref()).into());
            Some((Box::new(s), cert))
        }
        Ok(Err(e)) => {
            fail(inner, "unknown", "tls");
            warn!(ip = %addr.ip(), error = %e, "SMPP TLS handshake failed");
            None
        }
        Err(_) => {
            fail(inner, "unknown", "tls");
            None
        }
    }
}

/// Refuses a bind: counted, charged to the address unless throttled or a
/// known peer over its bind limit, announced once (a log line and a bind
/// event), answered with one status for every failed bind
/// (`ESME_RBINDFAIL`; `ESME_RALYBND` only to an authenticated peer over
/// its limit), and closed.
pub(super) async fn refuse_bind(
    inner: &Inner,
    mut framed: Framed<Box<dyn Io>, SmppCodec>,
    attempt: &BindAttempt,
    ip: IpAddr,
    r: Refusal,
) {
    let link = r.link.unwrap_or_else(|| "unknown".into());
    fail(inner, &link, r.reason);
    if r.reason != "throttled" && r.reason != "max_binds" {
        charge_failure(inner, ip);
    }
    if r.announce {
        // A known peer's name, else only a hash of what was sent:
        // an unknown system_id may be anything, a number included.
        let sid = if link == "unknown" {
            sid_hash(&attempt.system_id)
        } else {
            String::new()
        };
        warn!(link = %link, system_id_sha256 = %sid, ip = %ip, reason = r.reason, "SMPP bind refused");
        inner.deps.handler.bind_event(BindEvent::Failed {
            link: link.clone(),
            peer: ip.to_string(),
            reason: r.reason,
        });
    }
    let status = if r.reason == "max_binds" {
        // Only a peer that passed authentication learns this.
        CommandStatus::EsmeRalybnd
    } else {
        CommandStatus::EsmeRbindfail
    };
    let _ = answer_bind(&mut framed, attempt, status, &inner.opts.system_id).await;
    let _ =
        tokio::time::timeout(Duration::from_secs(1), futures::SinkExt::close(&mut framed)).await;
}

/// A successful bind.
pub(super) struct Bound {
    /// The peer's name.
    pub(super) link: String,
    /// The carrier it speaks for (`peers[].carrier`).
    pub(super) receipt_link: Option<String>,
}

/// A refused bind.
pub(super) struct Refusal {
    /// For the metric, the log and the audit record.
    pub(super) reason: &'static str,
    /// The peer, when the system_id named one.
    pub(super) link: Option<String>,
    /// Log and audit this one (false for all but the first throttled).
    pub(super) announce: bool,
}

/// Checks a bind. On success the bind is counted against `max_binds`.
/// `client_cert` is the SHA-256 of the certificate the peer presented on
/// TLS (`None` on the plaintext listener, or when none was asked for).
pub(super) fn authenticate(
    inner: &Inner,
    attempt: &BindAttempt,
    ip: IpAddr,
    client_cert: Option<[u8; 32]>,
) -> Result<Bound, Refusal> {
    let refuse = |reason, link: Option<&String>| Refusal {
        reason,
        link: link.cloned(),
        announce: true,
    };
    let (link, receipt_link, max) = match &inner.opts.auth {
        Auth::Any { link } => (link.clone(), None, u32::MAX),
        Auth::Peers(current) => {
            let peers = current.load();
            let Some(peer) = peers.iter().find(|p| p.system_id == attempt.system_id) else {
                return Err(refuse("unknown_system_id", None));
            };
            // The source address is checked before the password, so hosts
            // outside `allow` cannot probe passwords.
            if !peer.allow.iter().any(|net| net.contains(&ip)) {
                return Err(refuse("ip_not_allowed", Some(&peer.name)));
            }
            let digest = Sha256::digest(&attempt.password[..]);
            let ok: bool = digest.as_slice().ct_eq(&peer.password_sha256[..]).into();
            if !ok {
                return Err(refuse("bad_password", Some(&peer.name)));
            }
            // The same peer authentication on every listener: where TLS
            // asks for a client certificate, a bind without one (the
            // plaintext listener) is refused.
            let needs_cert = inner.opts.client_cert_required || peer.cert_sha256.is_some();
            match (client_cert, peer.cert_sha256) {
                (None, _) if needs_cert => {
                    return Err(refuse("no_client_cert", Some(&peer.name)));
                }
                (Some(got), Some(want)) if !bool::from(got.ct_eq(&want)) => {
                    return Err(refuse("cert_mismatch", Some(&peer.name)));
                }
                _ => {}
            }
            (peer.name.clone(), peer.carrier.clone(), peer.max_binds)
        }
    };
    let mut t = inner.table();
    let c = t.counts.entry(link.clone()).or_insert(0);
    if *c >= max {
        return Err(refuse("max_binds", Some(&link)));
    }
    *c += 1;
    Ok(Bound { link, receipt_link })
}
