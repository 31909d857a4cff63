//! The serving core's side of the fleet (`crate::fleet`): announce the admin changes made here,
//! and apply the ones other replicas announce — a changed traffic policy (read from Redis), a
//! load, an unload. The subscriber reconnects by itself and re-reads every policy when it does,
//! so a replica that starts later or was cut off catches up.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::admin::known;
use super::Core;
use crate::fleet::FleetEvent;
use crate::traffic::Route;

impl Core {
    /// The default version follows the heaviest route of the model's own versions.
    pub fn follow_default(&self, model: &str) {
        let Some(view) = self.traffic.view(model) else {
            return;
        };
        let heaviest = heaviest(&view.effective);
        if let Some(v) = heaviest.and_then(|v| semver::Version::parse(&v).ok()) {
            let _ = self.registry.set_default(model, &v);
        }
    }

    /// Tell the other replicas that `model`'s policy changed (stored first, then announced).
    pub async fn announce_traffic(&self, model: &str) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let policy = self.traffic.current(model);
        let done = async {
            fleet.store_policy(model, policy.as_ref()).await?;
            fleet
                .publish(FleetEvent::Traffic {
                    model: model.to_string(),
                })
                .await
        };
        if let Err(e) = done.await {
            tracing::warn!(model, error = %e, "traffic change applied here but not shared with the fleet");
        }
    }

    /// Tell the other replicas about a load or an unload.
    pub async fn announce(&self, event: FleetEvent) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        if let Err(e) = fleet.publish(event).await {
            tracing::warn!(error = %e, "change applied here but not shared with the fleet");
        }
    }

    /// Apply another replica's change.
    async fn apply(&self, event: FleetEvent) {
        match event {
            FleetEvent::Traffic { model } => self.adopt_policy(&model).await,
            FleetEvent::Load { model, version } => {
                match self.load_version(&model, &version).await {
                    Ok(()) => tracing::info!(model, version, "fleet: version loaded"),
                    Err(e) => {
                        tracing::warn!(model, version, error = %e.message, "fleet: load failed here")
                    }
                }
            }
            FleetEvent::Unload { model, version } => {
                match self.unload_version(&model, &version).await {
                    Ok(()) => tracing::info!(model, version, "fleet: version unloaded"),
                    Err(e) => {
                        tracing::warn!(model, version, error = %e.message, "fleet: unload refused here")
                    }
                }
            }
        }
    }

    /// Take the fleet's stored policy of `model` (none stored: none here either).
    async fn adopt_policy(&self, model: &str) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        if self.registry.get(model).is_none() {
            return;
        }
        match fleet.policy(model).await {
            Ok(Some(p)) => {
                if self.traffic.current(model).as_ref() == Some(&p) {
                    return;
                }
                match p.check(model, |m, v| known(&self.registry, m, v)) {
                    Ok(()) => {
                        self.traffic.install(model, p, true);
                        self.follow_default(model);
                        tracing::info!(model, "fleet: traffic policy applied");
                    }
                    Err(e) => {
                        tracing::warn!(model, error = %e, "fleet: traffic policy does not fit this replica's versions")
                    }
                }
            }
            Ok(None) => {
                if self.traffic.current(model).is_some() {
                    self.traffic.clear(model);
                    tracing::info!(model, "fleet: traffic policy removed");
                }
            }
            Err(e) => tracing::warn!(model, error = %e, "fleet: cannot read the traffic policy"),
        }
    }

    /// Follow the fleet until `stop`: subscribe, catch up on every policy, apply each
    /// announcement; on a lost connection, wait a little and start over.
    pub async fn run_fleet(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return;
            }
            match fleet.subscribe().await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(200);
                    for rec in self.registry.list() {
                        self.adopt_policy(&rec.id).await;
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(msg) => {
                                    if let Some(event) = fleet.decode(msg.get_payload_bytes()) {
                                        self.apply(event).await;
                                    }
                                }
                                None => break,
                            },
                            _ = stop.changed() => return,
                        }
                    }
                    tracing::warn!("fleet: subscription lost; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "fleet: cannot subscribe; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The version of this model with the most weight.
fn heaviest(routes: &[Route]) -> Option<String> {
    routes
        .iter()
        .filter(|r| r.model.is_none() && r.weight > 0.0)
        .max_by(|a, b| a.weight.total_cmp(&b.weight))
        .and_then(|r| r.version.clone())
}
