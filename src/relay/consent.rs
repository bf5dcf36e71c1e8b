//! Documented consent (opt-in) per campaign (README "Consent").
//!
//! Owns: the send-path check of a campaign with `require_opt_in`, recording
//! and withdrawing a consent (through the API or an MO opt-in keyword) with
//! its audit record, and the client API's consent administration
//! ([`ConsentService`] for [`Relay`]).
//!
//! Must not know: HTTP (the API decodes the evidence), where consents are
//! kept (the [`SharedState`] seam, like opt-outs).
//!
//! Invariants: a number is kept and audited only as its pseudonym; the
//! evidence is metadata (method, time, the client's reference), never PHI;
//! with the local store a consent change and its audit record commit in one
//! transaction; an opt-out always wins: the send path checks it first, and a
//! consent never removes one.

use std::sync::Arc;

use super::domain::{ClientId, ConsentEvidence, ConsentMethod, ConsentService};
use super::error::SendError;
use crate::audit::{Audit, AuditEvent, AuditNumber};
use crate::config::Campaign;
use crate::store::shared::{put_consent, SharedState};
use crate::store::StoreError;
use crate::types::{Pseudonym, E164};

use super::Relay;

/// The send-path check of a campaign with `require_opt_in`: `Ok` when the
/// recipient's consent is recorded.
pub(crate) async fn require(
    shared: &dyn SharedState,
    campaign: &str,
    pseudonym: &[u8; 32],
) -> Result<(), SendError> {
    match shared.consent(campaign, pseudonym).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(SendError::ConsentMissing),
        Err(e) => {
            tracing::error!("consent check: {e}");
            Err(SendError::StoreUnavailable)
        }
    }
}

/// Records (`Some`) or withdraws a consent, with its audit record by
/// `actor`; returns whether anything changed.
pub(crate) async fn change(
    shared: &Arc<dyn SharedState>,
    audit: &Audit,
    campaign: &str,
    pseudonym: Pseudonym,
    evidence: Option<&ConsentEvidence>,
    actor: &str,
    via: &'static str,
) -> Result<bool, StoreError> {
    let bytes = match evidence {
        Some(e) => Some(serde_json::to_vec(e).map_err(|e| StoreError::Refused(e.to_string()))?),
        None => None,
    };
    let number = AuditNumber::from(pseudonym);
    let event = match evidence {
        Some(e) => AuditEvent::ConsentRecorded {
            campaign: campaign.to_owned(),
            number,
            method: e.method.as_str(),
            via,
        },
        None => AuditEvent::ConsentWithdrawn {
            campaign: campaign.to_owned(),
            number,
            via,
        },
    };
    if shared.consent_is_local() {
        let prepared = Audit::prepare(event, actor)?;
        let campaign = campaign.to_owned();
        audit
            .write(move |log| {
                let changed = put_consent(log.txn(), &campaign, &pseudonym.0, bytes.as_deref())?;
                if changed {
                    log.append_prepared(&prepared)?;
                }
                Ok(changed)
            })
            .await
    } else {
        let changed = shared.set_consent(campaign, &pseudonym.0, bytes).await?;
        if changed {
            audit.record(event, actor).await?;
        }
        Ok(changed)
    }
}

/// An MO: when its whole text is one of the campaign's opt-in keywords and
/// the sender has no consent recorded yet, records one (method `keyword`)
/// and returns the confirmation to send.
pub(crate) async fn on_mo(
    shared: &Arc<dyn SharedState>,
    audit: &Audit,
    campaign: &Campaign,
    pseudonym: Pseudonym,
    text: &str,
    link: &str,
) -> Result<Option<String>, StoreError> {
    let word = text
        .trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
        .to_ascii_uppercase();
    if !campaign.opt_in_keywords.contains(&word) {
        return Ok(None);
    }
    if shared.consent(&campaign.id, &pseudonym.0).await?.is_some() {
        return Ok(None);
    }
    let evidence = ConsentEvidence {
        method: ConsentMethod::Keyword,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        client_ref: None,
    };
    change(
        shared,
        audit,
        &campaign.id,
        pseudonym,
        Some(&evidence),
        link,
        "mo",
    )
    .await?;
    Ok(Some(campaign.opt_in_text.clone()))
}

impl ConsentService for Relay {
    fn consent<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> futures::future::BoxFuture<'a, Result<Option<ConsentEvidence>, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let (shared, _, key) = self.consent_parts();
            let p = Pseudonym::of(key, number);
            match shared.consent(campaign, &p.0).await {
                Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::error!("consent look-up: {e}");
                    Err(super::service::internal_or_shared(&e))
                }
            }
        })
    }

    fn change_consent<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
        evidence: Option<ConsentEvidence>,
    ) -> futures::future::BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let (shared, audit, key) = self.consent_parts();
            let p = Pseudonym::of(key, number);
            change(
                shared,
                audit,
                campaign,
                p,
                evidence.as_ref(),
                client.as_str(),
                "api",
            )
            .await
            .map(drop)
            .map_err(|e| {
                tracing::error!("consent change: {e}");
                super::service::internal_or_shared(&e)
            })
        })
    }
}
