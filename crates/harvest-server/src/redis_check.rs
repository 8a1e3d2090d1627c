//! The Redis readiness check: one reconnecting connection per configured node, each
//! call bounded by the Redis timeout. With several nodes (a Redis Cluster) each must
//! also report `cluster_state:ok`: a node that lost its slots' owners refuses commands.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// Pings every configured Redis node.
#[derive(Clone)]
pub struct RedisCheck {
    nodes: std::sync::Arc<Vec<Node>>,
    timeout: Duration,
    cluster: bool,
}

struct Node {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
}

impl RedisCheck {
    /// Parses the (comma-separated) URLs; connects lazily on the first check.
    pub fn new(urls: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let nodes = harvest_stock::redis_urls(urls)
            .iter()
            .map(|u| {
                Ok(Node {
                    client: redis::Client::open(u.as_str())?,
                    conn: OnceCell::new(),
                })
            })
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        Ok(Self {
            cluster: nodes.len() > 1,
            nodes: std::sync::Arc::new(nodes),
            timeout,
        })
    }

    /// `Ok` when every node answers PING within the timeout.
    pub async fn ping(&self) -> Result<(), String> {
        for node in self.nodes.iter() {
            tokio::time::timeout(self.timeout, node.ping(self.timeout, self.cluster))
                .await
                .map_err(|_| "timed out".to_owned())??;
        }
        Ok(())
    }
}

impl Node {
    async fn ping(&self, timeout: Duration, cluster: bool) -> Result<(), String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = conn.clone();
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong != "PONG" {
            return Err(format!("unexpected answer {pong:?}"));
        }
        if cluster {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err("the Redis Cluster is not ok (cluster_state)".into());
            }
        }
        Ok(())
    }
}
