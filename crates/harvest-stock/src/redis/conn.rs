//! One Redis connection for a single server or a Redis Cluster.
//!
//! A Redis URL setting names one server (`redis://host:port`) or, comma-separated,
//! several nodes of one Redis Cluster (`redis://h1:7000,redis://h2:7001,...`; any
//! reachable node is enough to discover the others). [`RedisConn`] is a reconnecting
//! connection to either, made on first use, so building one succeeds while Redis is
//! down.
//!
//! On a cluster every command goes to the node that owns its key's slot (scripts by
//! their first key, so every script's keys must share one hash tag; `SCRIPT LOAD` goes
//! to every master). A pipeline whose commands hash to several slots is split into one
//! pipeline per slot, sent concurrently: the replies come back in the pipeline's order,
//! but commands of different slots are not ordered with each other. Transactions
//! (`MULTI`) must stay within one slot.

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// The URLs of a Redis URL setting: one server, or the nodes of a Redis Cluster.
pub fn redis_urls(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A reconnecting connection to one Redis server or to a Redis Cluster. Cheap to clone
/// (clones share the connection).
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// The nodes of a Redis Cluster (slots discovered from any of them).
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// A connection for a Redis URL setting (see the module docs), connecting on first
    /// use. Every connect and reply is bounded by `timeout`. Must be called within a
    /// Tokio runtime.
    pub fn new_lazy(setting: &str, timeout: Duration) -> RedisResult<Self> {
        let urls = redis_urls(setting);
        match urls.as_slice() {
            [] => Err((redis::ErrorKind::InvalidClientConfig, "empty Redis URL").into()),
            [one] => {
                let client = redis::Client::open(one.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(timeout);
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            nodes => {
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// The slot of the key a command is routed by (the first key), `None` for commands
/// without one.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            Arg::Simple(b) => b,
            _ => b"0",
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let keys: u64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"PING" | b"SCRIPT" | b"PUBLISH" | b"INFO" => return None,
        _ => args.get(1)?,
    };
    Some(Slot::for_key(key))
}

/// Runs a pipeline on a cluster: as it is when its commands share a slot, else one
/// sub-pipeline per slot, concurrently, with the replies put back in order.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let mut groups: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let slot = slot_of(cmd);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    if pipeline.is_transaction() || groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let parts = groups.into_iter().map(|(_, members)| {
        let mut sub = redis::pipe();
        for &i in &members {
            sub.add_command(cmds[i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let n = members.len();
            let values = conn.req_packed_commands(&sub, 0, n).await?;
            Ok::<_, redis::RedisError>((members, values))
        }
    });
    let mut out = vec![Value::Nil; cmds.len()];
    for (members, values) in futures::future::try_join_all(parts).await? {
        for (i, v) in members.into_iter().zip(values) {
            out[i] = v;
        }
    }
    Ok(out.into_iter().skip(offset).take(count).collect())
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => {
                let fut: BoxFuture<'a, RedisResult<Vec<Value>>> =
                    cluster_pipeline(c, pipeline, offset, count).boxed();
                fut
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_trimmed() {
        assert_eq!(redis_urls("redis://a:1"), vec!["redis://a:1"]);
        assert_eq!(
            redis_urls(" redis://a:1 , redis://b:2,"),
            vec!["redis://a:1", "redis://b:2"]
        );
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("hv:{s:1}:m").arg("hv:{s:1}:u");
        assert_eq!(slot_of(&eval), Some(Slot::for_key("{s:1}")));
        let mut none = redis::cmd("EVALSHA");
        none.arg("abc").arg(0);
        assert_eq!(slot_of(&none), None);
        let mut sadd = redis::cmd("SADD");
        sadd.arg("hv:stock:sales").arg("x");
        assert_eq!(slot_of(&sadd), Some(Slot::for_key("hv:stock:sales")));
        assert_eq!(slot_of(&redis::cmd("PING")), None);
    }
}
