//! Keyword answers: the STOP/START/HELP texts the MO path queues
//! ([`KeywordReply`]), sent through the normal send path.

use super::*;

/// The actor name of auto-replies in metrics, records and the audit log.
pub const AUTO_REPLY_ACTOR: &str = "sms-conduit:auto-reply";

/// A keyword's answer (the campaign's STOP/START/HELP text) the MO path
/// asks the relay to send; see [`Relay::answer_keywords`].
#[derive(Debug)]
pub struct KeywordReply {
    pub campaign: String,
    /// Our number the MO was sent to: the answer's sender.
    pub from: E164,
    /// Who sent the keyword.
    pub to: E164,
    /// The configured answer (not a patient's text).
    pub text: String,
}

/// How many keyword answers may wait for the relay: far more than MO
/// arrive in the time one send task takes to start.
pub const KEYWORD_REPLY_QUEUE: usize = 1024;

impl Relay {
    /// Sends a keyword answer (`help_text`, `stop_text`, `start_text`) from
    /// our number `from` to `to`, through the normal send path.
    pub async fn auto_reply(
        &self,
        campaign: &str,
        from: E164,
        to: E164,
        text: String,
    ) -> Result<SendAccepted, SendError> {
        let req = SendRequest {
            from,
            to,
            text: crate::types::Body::new(text),
            campaign_id: campaign.to_owned(),
            validity: None,
            client_ref: None,
        };
        self.send_as(Origin::AutoReply, AUTO_REPLY_ACTOR, req, None)
            .await
    }

    /// Sends the keyword answers the MO path queues, each through the
    /// normal send path in a background task (the drain waits for them),
    /// until `stop`, and then the ones still queued. The channel breaks
    /// what would otherwise be a cycle: the relay needs the carrier pools,
    /// the pools need the inbound handler, and the handler answers
    /// keywords through the relay.
    pub async fn answer_keywords(
        self,
        mut queue: tokio::sync::mpsc::Receiver<KeywordReply>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                r = queue.recv() => r,
                () = stop.cancelled() => None,
            };
            let Some(reply) = next else { break };
            self.spawn_reply(reply);
        }
        queue.close();
        while let Ok(reply) = queue.try_recv() {
            self.spawn_reply(reply);
        }
    }

    pub(super) fn spawn_reply(&self, r: KeywordReply) {
        let relay = self.clone();
        self.inner.background.spawn(async move {
            if let Err(e) = relay.auto_reply(&r.campaign, r.from, r.to, r.text).await {
                tracing::warn!(campaign = %r.campaign, "keyword answer not sent: {}", e.code());
            }
        });
    }
}
