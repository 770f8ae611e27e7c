//! A connection to one Redis server, or to a Redis Cluster, behind one type: every key of a
//! hub shares a hash slot, so the same commands work on both.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where the hub's Redis is.
#[derive(Debug, Clone)]
pub(super) enum Servers {
    One(String),
    Cluster(Vec<String>),
}

/// One connection (multiplexed: many commands in flight), reconnecting by itself.
#[derive(Clone)]
pub(super) enum Link {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::One(_) => "Link::One",
            Link::Cluster(_) => "Link::Cluster",
        })
    }
}

impl Link {
    /// Opens a connection whose commands fail after `response_timeout` without an answer,
    /// so a stalled server is noticed.
    pub(super) async fn open(servers: &Servers, response_timeout: Duration) -> RedisResult<Link> {
        let connect_timeout = Duration::from_secs(2);
        match servers {
            Servers::One(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Link::One(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Servers::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .response_timeout(response_timeout)
                    .connection_timeout(connect_timeout)
                    .retries(1)
                    .build()?;
                Ok(Link::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
