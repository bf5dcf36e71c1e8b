//! [`SharedState`] on Redis: daily counters, opt-outs and consents,
//! the carrier-id index, forwarded receipts, idempotency claims, status
//! projections and the send's admission.

use super::*;

impl SharedState for RedisShared {
    fn add_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
        cap: u64,
    ) -> BoxFuture<'a, Result<Result<u64, u64>, StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            let (added, n): (i64, u64) = self
                .call("daily", |mut c| async move {
                    self.scripts
                        .add_daily
                        .key(k)
                        .arg(amount)
                        .arg(cap)
                        .arg(DAILY_TTL_SECS)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(if added == 1 { Ok(n) } else { Err(n) })
        })
    }

    fn release_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            self.call("daily", |mut c| async move {
                self.scripts
                    .release_daily
                    .key(k)
                    .arg(amount)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn daily<'a>(&'a self, key: &'a str, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            let v: Option<u64> = self
                .call("daily", |mut c| async move { c.get(k).await })
                .await?;
            Ok(v.unwrap_or(0))
        })
    }

    fn opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call("opt_out", |mut c| async move {
                c.sadd::<_, _, i64>(k, member).await
            })
            .await
            .map(|_| ())
        })
    }

    fn opt_in<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call("opt_out", |mut c| async move {
                c.srem::<_, _, i64>(k, member).await
            })
            .await
            .map(|_| ())
        })
    }

    fn is_opted_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call(
                "opt_out",
                |mut c| async move { c.sismember(k, member).await },
            )
            .await
        })
    }

    fn consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = self.consent_key(campaign)?;
            let field = hex::encode(pseudonym);
            self.call("consent", |mut c| async move {
                c.hget::<_, _, Option<Vec<u8>>>(k, field).await
            })
            .await
        })
    }

    fn set_consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
        evidence: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = self.consent_key(campaign)?;
            let field = hex::encode(pseudonym);
            self.call("consent", |mut c| async move {
                match evidence {
                    Some(e) => {
                        let before: Option<Vec<u8>> = c.hget(&k, &field).await?;
                        let changed = before.as_deref() != Some(e.as_slice());
                        let _: i64 = c.hset(&k, &field, e).await?;
                        Ok(changed)
                    }
                    None => c.hdel::<_, _, i64>(&k, &field).await.map(|n| n > 0),
                }
            })
            .await
        })
    }

    fn index_carrier_ids<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let value = format!("{} {message_id}", self.node);
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.set_ex(self.index_key(carrier, key), &value, self.index_ttl_secs)
                    .ignore();
            }
            self.call("index", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
        })
    }

    fn lookup_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            Ok(match self.locate_carrier_id(carrier, keys).await? {
                Some(Located::Here(id)) => Some(id),
                // Its record lives at its owner: see `forward_receipt`.
                Some(Located::Elsewhere { .. }) | None => None,
            })
        })
    }

    fn locate_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Located>, StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(None);
            }
            let ks: Vec<String> = keys.iter().map(|k| self.index_key(carrier, k)).collect();
            let found: Vec<Option<String>> = self
                .call("index", |mut c| async move {
                    redis::cmd("MGET").arg(ks).query_async(&mut c).await
                })
                .await?;
            for v in found.into_iter().flatten() {
                let Some((node, id)) = v.split_once(' ') else {
                    continue;
                };
                return Ok(Some(if node == self.node {
                    Located::Here(id.to_owned())
                } else {
                    Located::Elsewhere {
                        node: node.to_owned(),
                        message_id: id.to_owned(),
                    }
                }));
            }
            Ok(None)
        })
    }

    fn forward_receipt<'a>(
        &'a self,
        node: &'a str,
        r: &'a ForwardedReceipt,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.receipt_stream(node);
            let fields = [
                ("carrier", r.carrier.as_str()),
                ("carrier_id", r.carrier_id.as_str()),
                ("message_id", r.message_id.as_str()),
                ("state", r.state.as_str()),
                ("error", r.error.as_deref().unwrap_or("")),
            ];
            self.call("receipt_forward", |mut c| async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(key).arg("*");
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
                cmd.query_async::<String>(&mut c).await
            })
            .await
            .map(|_| ())
        })
    }

    fn idempotency_is_shared(&self) -> bool {
        true
    }

    fn claim_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        claim: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            let ttl = self.idem_ttl_ms;
            self.call("idempotency", |mut c| async move {
                // SET NX GET (Redis 7): claims, or returns the claim there.
                let claimed: Option<Vec<u8>> = redis::cmd("SET")
                    .arg(&k)
                    .arg(claim)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await?;
                Ok(claimed)
            })
            .await
        })
    }

    fn finish_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        message_id: &'a str,
        outcome: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            let outcome = outcome.to_string();
            self.call("idempotency", |mut c| async move {
                self.scripts
                    .finish_idem
                    .key(k)
                    .arg(message_id)
                    .arg(outcome)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn forget_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            self.call(
                "idempotency",
                |mut c| async move { c.del::<_, i64>(k).await },
            )
            .await
            .map(|_| ())
        })
    }

    fn messages_are_shared(&self) -> bool {
        true
    }

    fn project_message<'a>(
        &'a self,
        id: &'a str,
        updated_ms: u64,
        projection: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("{}m:{id}", self.prefix);
            let ttl = self.idem_ttl_ms;
            self.call("message", |mut c| async move {
                self.scripts
                    .project
                    .key(k)
                    .arg(projection)
                    .arg(updated_ms)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn projected_message<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = format!("{}m:{id}", self.prefix);
            self.call("message", |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(k).await
            })
            .await
        })
    }

    fn admission_checks_opt_out(&self) -> bool {
        true
    }

    fn admit<'a>(
        &'a self,
        a: &'a Admission,
        _cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<Verdict, StoreError>> {
        Box::pin(async move {
            let (c_int, c_tol) = gcra_us(a.campaign_rate.per_minute, a.campaign_rate.burst);
            let (n_int, n_tol) = a
                .number_rate
                .map_or((0, 0), |r| gcra_us(r.per_minute, r.burst));
            let cap = a.daily.as_ref().map_or(0, |(_, cap)| *cap);
            let member = a.recipient.map(hex::encode).unwrap_or_default();
            let keys = self.keys(a);
            let (code, wait_us): (i64, i64) = self
                .call("admit", |mut c| async move {
                    let mut inv = self.scripts.admit.prepare_invoke();
                    for k in keys {
                        inv.key(k);
                    }
                    inv.arg(a.segments)
                        .arg(c_int)
                        .arg(c_tol)
                        .arg(n_int)
                        .arg(n_tol)
                        .arg(cap)
                        .arg(DAILY_TTL_SECS)
                        .arg(member);
                    inv.invoke_async(&mut c).await
                })
                .await?;
            Ok(match code {
                0 => Verdict::Admitted,
                1 => Verdict::OptedOut,
                2 => Verdict::RateLimited(Duration::from_micros(wait_us.max(0) as u64)),
                _ => Verdict::DailyCapReached,
            })
        })
    }

    fn refund<'a>(
        &'a self,
        a: &'a Admission,
        _cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (c_int, _) = gcra_us(a.campaign_rate.per_minute, a.campaign_rate.burst);
            let n_int = a
                .number_rate
                .map_or(0, |r| gcra_us(r.per_minute, r.burst).0);
            let daily = if a.daily.is_some() { "1" } else { "0" };
            let [ck, nk, dk, _] = self.keys(a);
            self.call("refund", |mut c| async move {
                self.scripts
                    .refund
                    .key(ck)
                    .key(nk)
                    .key(dk)
                    .arg(a.segments)
                    .arg(c_int)
                    .arg(n_int)
                    .arg(daily)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn is_up(&self) -> bool {
        self.down_since.lock().is_none()
    }
}
