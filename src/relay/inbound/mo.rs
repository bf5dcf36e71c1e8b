//! MO: a message from a handset, decoded (concatenated parts held by
//! [`crate::relay::reassembly`]), its campaign found by the number it was
//! sent to, STOP/START/HELP acted on, and POSTed to the client's webhook
//! while the carrier waits.

use super::*;

/// How long the carrier may wait for the client's webhook on an MO.
pub(super) const MO_WEBHOOK_DEADLINE: Duration = Duration::from_secs(5);

impl Inbound {
    /// Records a STOP/START state change once; returns the confirmation
    /// text to send when the state changed.
    pub(super) async fn opt_change(
        &self,
        link: &str,
        campaign: &Campaign,
        pseudonym: Pseudonym,
        stop: bool,
    ) -> Result<Option<String>, StoreError> {
        let was = self.shared.is_opted_out(&campaign.id, &pseudonym.0).await?;
        if was == stop {
            return Ok(None);
        }
        if stop {
            self.shared.opt_out(&campaign.id, &pseudonym.0).await?;
        } else {
            self.shared.opt_in(&campaign.id, &pseudonym.0).await?;
        }
        let number = AuditNumber::from(pseudonym);
        let ev = if stop {
            AuditEvent::OptOutAdded {
                campaign: campaign.id.clone(),
                number,
                via: "mo",
            }
        } else {
            AuditEvent::OptOutRemoved {
                campaign: campaign.id.clone(),
                number,
                via: "mo",
            }
        };
        if let Err(e) = self.audit.record(ev, link).await {
            tracing::error!("audit record of an opt-out change: {e}");
        }
        Ok(Some(if stop {
            campaign.stop_text.clone()
        } else {
            campaign.start_text.clone()
        }))
    }

    pub(super) async fn mo(&self, link: &str, msg: &InboundMessage) -> InboundOutcome {
        let view = self.view();
        let Ok(from) = E164::from_smpp(&msg.source_addr) else {
            self.mo_outcome(link, "bad_source");
            return InboundOutcome::Refused(Refusal::BadSource);
        };
        let found = E164::from_smpp(&msg.dest_addr).ok().and_then(|to| {
            view.numbers
                .get(&to)
                .and_then(|c| view.campaigns.get(c))
                .map(|c| (to, c.clone()))
        });
        let Some((to, campaign)) = found else {
            tracing::warn!(link, to = %crate::types::masked(&msg.dest_addr), "MO to a number of no campaign");
            self.mo_outcome(link, "unknown_destination");
            return InboundOutcome::Refused(Refusal::UnknownDestination);
        };
        let Ok((concat, data)) = encoding::split_udh(msg.esm_class, msg.body_bytes()) else {
            self.mo_outcome(link, "undecodable");
            return InboundOutcome::Refused(Refusal::Undecodable);
        };
        let Some(c) = concat else {
            return self
                .mo_whole(link, &view, from, to, campaign, msg.data_coding, data)
                .await;
        };
        let key = reassembly::Key {
            link: link.to_owned(),
            from: from.as_str().to_owned(),
            to: to.as_str().to_owned(),
            reference: c.reference,
            total: c.total,
        };
        let (ticket, data_coding, whole) = match self.parts.add(key, c.seq, msg.data_coding, data) {
            Assembly::Whole(ticket, dc, w) => (ticket, dc, w),
            // Earlier parts are acknowledged and held in memory.
            Assembly::Held => return InboundOutcome::Held,
            // Its message was relayed already: the carrier re-sent it.
            Assembly::Duplicate => {
                self.mo_outcome(link, "duplicate_part");
                return InboundOutcome::Held;
            }
            // Not kept, so not acknowledged: the carrier retries it.
            Assembly::Busy => {
                self.mo_outcome(link, "busy");
                return InboundOutcome::RetryLater;
            }
            Assembly::NoRoom => {
                tracing::warn!(
                    link,
                    "MO part not held (held parts at their bound); the carrier will retry"
                );
                self.mo_outcome(link, "parts_full");
                return InboundOutcome::RetryLater;
            }
            Assembly::TooLong => {
                tracing::warn!(link, "MO part refused: longer than one SMS can carry");
                self.mo_outcome(link, "part_too_long");
                return InboundOutcome::Refused(Refusal::TooLong);
            }
        };
        let status = self
            .mo_whole(link, &view, from, to, campaign, data_coding, &whole)
            .await;
        // Parts stay held only while the carrier is to retry (temporary
        // error); a delivered whole is remembered so its redelivered parts
        // are not relayed again.
        ticket.close(match status {
            InboundOutcome::Taken | InboundOutcome::Held => reassembly::Outcome::Delivered,
            InboundOutcome::RetryLater => reassembly::Outcome::Retry,
            InboundOutcome::Refused(_) => reassembly::Outcome::Refused,
        });
        status
    }

    /// The rest of [`Inbound::mo`], once the text is whole.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn mo_whole(
        &self,
        link: &str,
        view: &MoView,
        from: E164,
        to: E164,
        campaign: Campaign,
        data_coding: u8,
        bytes: &[u8],
    ) -> InboundOutcome {
        let Ok(text) = encoding::decode_text(data_coding, bytes) else {
            self.mo_outcome(link, "undecodable");
            return InboundOutcome::Refused(Refusal::Undecodable);
        };
        let class = keyword(text.expose());
        let pseudonym = Pseudonym::of(&self.pseudonym_key, &from);
        // Opt-out state first: a STOP is honoured even if the webhook fails.
        let mut reply = match class {
            KeywordClass::Stop | KeywordClass::Start => {
                match self
                    .opt_change(link, &campaign, pseudonym, class == KeywordClass::Stop)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("recording an opt-out change: {e}");
                        return InboundOutcome::RetryLater;
                    }
                }
            }
            KeywordClass::Help => Some(campaign.help_text.clone()),
            KeywordClass::Other => None,
        };
        if class == KeywordClass::Other && !campaign.opt_in_keywords.is_empty() {
            let r = crate::relay::consent::on_mo(
                &self.shared,
                &self.audit,
                &campaign,
                pseudonym,
                text.expose(),
                link,
            );
            match r.await {
                Ok(answer) => reply = answer,
                Err(e) => {
                    tracing::error!("recording a consent: {e}");
                    return InboundOutcome::RetryLater;
                }
            }
        }
        let ev = AuditEvent::MoReceived {
            link: link.to_owned(),
            from: AuditNumber::from(pseudonym),
            to: AuditNumber::of(&to, &self.pseudonym_key, &view.own),
            campaign: Some(campaign.id.clone()),
            keyword: class,
        };
        if let Err(e) = self.audit.record(ev, link).await {
            tracing::error!("audit record of an MO: {e}");
        }
        let status = match (view.receivers.get(&campaign.id), &self.webhooks) {
            (Some(client), Some(hooks)) => {
                let event = ReceivedEvent {
                    from: from.clone(),
                    to: to.clone(),
                    text,
                    campaign_id: campaign.id.clone(),
                    keyword: (class != KeywordClass::Other)
                        .then(|| class.as_str().to_ascii_uppercase()),
                    received_ms: now_ms(),
                };
                match hooks.deliver_now(client, event, MO_WEBHOOK_DEADLINE).await {
                    Ok(()) => InboundOutcome::Taken,
                    Err(e) => {
                        tracing::warn!(link, client = %client, "MO webhook failed; the carrier will retry: {e}");
                        self.mo_outcome(link, "webhook_failed");
                        // A HELP answer waits for the delivery that succeeds.
                        if class == KeywordClass::Help {
                            reply = None;
                        }
                        InboundOutcome::RetryLater
                    }
                }
            }
            // No client takes this campaign's MO. A keyword was handled
            // here (the opt-out state recorded, the answer sent); any other
            // text has nobody to go to yet, and SPEC §1.4 acknowledges an
            // MO only once a client has it: a temporary error, so the
            // carrier retries (and delivers once a client's webhook is
            // configured), not taken and dropped.
            _ if class != KeywordClass::Other => InboundOutcome::Taken,
            _ => {
                tracing::warn!(link, campaign = %campaign.id, "MO refused for now, the carrier will retry: no client with a webhook receives this campaign's messages");
                self.mo_outcome(link, "no_client");
                InboundOutcome::RetryLater
            }
        };
        if status == InboundOutcome::Taken {
            self.mo_outcome(link, "delivered");
        }
        if let Some(answer) = reply.filter(|t| !t.is_empty()) {
            // The answer goes out through the normal send path, off the
            // carrier's wait.
            let r = KeywordReply {
                campaign: campaign.id.clone(),
                from: to,
                to: from,
                text: answer,
            };
            if let Err(e) = self.replies.try_send(r) {
                let campaign = &campaign.id;
                tracing::warn!(%campaign, "keyword answer not sent: the relay's queue is {}", match e {
                    mpsc::error::TrySendError::Full(_) => "full",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                });
            }
        }
        status
    }
}
