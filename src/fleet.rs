//! The fleet: model and traffic changes made through the admin API of one replica reach every
//! replica, through the Redis the replicas already share (the response cache's, or the rate
//! limits'). Each traffic policy is stored under `anya:fleet:traffic:<model>` (so a replica that
//! starts later, or missed a message while disconnected, reads it) and every change is
//! announced on the channel `anya:fleet:events`; loads and unloads are announced too. A replica
//! applies what others announce and ignores its own messages.
//!
//! Redis being down never fails a request or an admin call: the change applies locally, a
//! warning is logged, and the subscriber reconnects (re-reading every policy) by itself.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::traffic::TrafficPolicy;

const CHANNEL: &str = "anya:fleet:events";
const POLICY_KEY: &str = "anya:fleet:traffic:";

/// A change one replica announces to the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FleetEvent {
    /// The model's policy changed: read it from its key.
    Traffic {
        model: String,
    },
    Load {
        model: String,
        version: String,
    },
    Unload {
        model: String,
        version: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Message {
    from: String,
    #[serde(flatten)]
    event: FleetEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet Redis URL: {0}")]
    Url(String),
    #[error("fleet Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("fleet Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("fleet message: {0}")]
    Decode(String),
}

/// This replica's link to the others.
pub struct Fleet {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    /// A random id per process, to skip our own messages.
    replica: String,
    timeout: Duration,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("replica", &self.replica)
            .finish()
    }
}

impl Fleet {
    /// A lazy connection to `url` (nothing is dialled until first used).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, FleetError> {
        let client = redis::Client::open(url).map_err(|e| FleetError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| FleetError::Url(e.to_string()))?;
        Ok(Fleet {
            client,
            conn,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            timeout,
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(FleetError::Timeout(self.timeout)),
        }
    }

    /// Store `model`'s policy (or its absence) for every replica.
    pub async fn store_policy(
        &self,
        model: &str,
        policy: Option<&TrafficPolicy>,
    ) -> Result<(), FleetError> {
        let mut conn = self.conn.clone();
        let key = format!("{POLICY_KEY}{model}");
        match policy {
            Some(p) => {
                let text =
                    serde_json::to_string(p).map_err(|e| FleetError::Decode(e.to_string()))?;
                self.bounded(conn.set::<_, _, ()>(key, text)).await
            }
            None => self.bounded(conn.del::<_, ()>(key)).await,
        }
    }

    /// The stored policy of `model`: `Some(None)` when the fleet has none.
    pub async fn policy(&self, model: &str) -> Result<Option<TrafficPolicy>, FleetError> {
        let mut conn = self.conn.clone();
        let text: Option<String> = self
            .bounded(conn.get(format!("{POLICY_KEY}{model}")))
            .await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| FleetError::Decode(e.to_string())))
            .transpose()
    }

    /// Announce a change.
    pub async fn publish(&self, event: FleetEvent) -> Result<(), FleetError> {
        let text = serde_json::to_string(&Message {
            from: self.replica.clone(),
            event,
        })
        .map_err(|e| FleetError::Decode(e.to_string()))?;
        let mut conn = self.conn.clone();
        self.bounded(conn.publish::<_, _, ()>(CHANNEL, text)).await
    }

    /// A subscription to the fleet's channel (a connection of its own).
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, FleetError> {
        let mut pubsub = self.bounded(self.client.get_async_pubsub()).await?;
        self.bounded(pubsub.subscribe(CHANNEL)).await?;
        Ok(pubsub)
    }

    /// Decode a message from the channel: `None` for our own and for undecodable ones.
    pub fn decode(&self, payload: &[u8]) -> Option<FleetEvent> {
        let m: Message = serde_json::from_slice(payload).ok()?;
        (m.from != self.replica).then_some(m.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn own_messages_are_skipped_and_others_decoded() {
        let a = Fleet::new("redis://127.0.0.1:1", Duration::from_millis(10)).unwrap();
        let b = Fleet::new("redis://127.0.0.1:1", Duration::from_millis(10)).unwrap();
        let msg = serde_json::to_vec(&Message {
            from: a.replica().to_string(),
            event: FleetEvent::Load {
                model: "m".into(),
                version: "1.0.0".into(),
            },
        })
        .unwrap();
        assert_eq!(a.decode(&msg), None);
        assert_eq!(
            b.decode(&msg),
            Some(FleetEvent::Load {
                model: "m".into(),
                version: "1.0.0".into()
            })
        );
        assert_eq!(b.decode(b"{not json"), None);
        let text = String::from_utf8(msg).unwrap();
        assert!(text.contains("\"kind\":\"load\""), "{text}");
    }
}
