//! Dialling another service. Every service-to-service client goes through
//! here, so timeouts, balancing and (later) mutual TLS are decided once.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// A lazily connected channel to one or more replicas of a service.
///
/// With several URLs, requests are balanced per request (tower's p2c), not
/// per connection — a plain ClusterIP would pin a frontend to one replica.
/// Lazy: a service whose peer is down still starts, and calls fail with
/// `Unavailable` until the peer is back, then recover with no restart.
pub fn lazy_channel(urls: &[String], timeout: Duration) -> Result<Channel, String> {
    let endpoints = urls
        .iter()
        .map(|u| {
            Endpoint::from_shared(u.clone())
                .map(|e| {
                    e.connect_timeout(timeout.min(Duration::from_secs(5)))
                        .timeout(timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_while_idle(true)
                })
                .map_err(|e| format!("bad endpoint {u:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match endpoints.as_slice() {
        [] => Err("no endpoint configured".into()),
        [one] => Ok(one.connect_lazy()),
        _ => Ok(Channel::balance_list(endpoints.into_iter())),
    }
}
