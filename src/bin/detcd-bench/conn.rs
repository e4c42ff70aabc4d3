//! Connections: `--conns` gRPC channels, connection `i` to `endpoints[i % n]` (as kvbench), so
//! `--conns 1` talks to the first endpoint only and `.bench/compare` lists the leader first.

use tonic::transport::Channel;

use crate::options::Options;

pub async fn connect(endpoint: &str) -> Result<Channel, String> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    tonic::transport::Endpoint::from_shared(url)
        .map_err(|error| format!("{endpoint}: {error}"))?
        .connect()
        .await
        .map_err(|error| format!("{endpoint}: {error}"))
}

pub async fn channels(options: &Options) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(options.conns);
    for i in 0..options.conns {
        channels.push(connect(&options.endpoints[i % options.endpoints.len()]).await?);
    }
    Ok(channels)
}
