//! Opt-out and consent administration for clients, on their own
//! campaigns only.

use super::*;

impl OptOutService for Relay {
    fn opt_out_status<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> futures::future::BoxFuture<'a, Result<OptOutView, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let p = Pseudonym::of(&self.inner.pseudonym_key, number);
            let opted_out = self
                .inner
                .shared
                .is_opted_out(campaign, &p.0)
                .await
                .map_err(|e| {
                    tracing::error!("opt-out look-up: {e}");
                    internal_or_shared(&e)
                })?;
            Ok(OptOutView {
                campaign_id: campaign.to_owned(),
                number: number.clone(),
                opted_out,
            })
        })
    }

    fn opt_out_change<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
        change: OptOutChange,
    ) -> futures::future::BoxFuture<'a, Result<OptOutView, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let p = Pseudonym::of(&self.inner.pseudonym_key, number);
            let add = change == OptOutChange::Add;
            let shared = &self.inner.shared;
            let internal = |e: crate::store::StoreError| {
                tracing::error!("opt-out change: {e}");
                internal_or_shared(&e)
            };
            let was = shared
                .is_opted_out(campaign, &p.0)
                .await
                .map_err(internal)?;
            if was != add {
                let r = if add {
                    shared.opt_out(campaign, &p.0).await
                } else {
                    shared.opt_in(campaign, &p.0).await
                };
                r.map_err(internal)?;
                let number_field = AuditNumber::from(p);
                let ev = if add {
                    AuditEvent::OptOutAdded {
                        campaign: campaign.to_owned(),
                        number: number_field,
                        via: "api",
                    }
                } else {
                    AuditEvent::OptOutRemoved {
                        campaign: campaign.to_owned(),
                        number: number_field,
                        via: "api",
                    }
                };
                if let Err(e) = self.inner.audit.record(ev, client.as_str()).await {
                    tracing::error!("audit record of an opt-out change: {e}");
                }
            }
            Ok(OptOutView {
                campaign_id: campaign.to_owned(),
                number: number.clone(),
                opted_out: add,
            })
        })
    }
}

impl Relay {
    /// What [`super::consent`] needs: the shared state, the audit log and
    /// the pseudonym key.
    pub(crate) fn consent_parts(&self) -> (&Arc<dyn SharedState>, &Audit, &Secret) {
        (
            &self.inner.shared,
            &self.inner.audit,
            &self.inner.pseudonym_key,
        )
    }

    /// The client may administer only its own campaigns' opt-outs (and
    /// consents).
    pub(crate) fn own_campaign(&self, client: &ClientId, campaign: &str) -> Result<(), SendError> {
        let view = self.inner.view.load();
        if view
            .clients
            .get(client.as_str())
            .is_some_and(|c| c.contains(campaign))
        {
            Ok(())
        } else {
            Err(SendError::CampaignNotAllowed)
        }
    }
}
