//! `ready`: waits until every endpoint answers a status request and all name the same leader,
//! then prints the endpoints with the leader's first (so `--conns 1` talks to the leader, as
//! `../shared/bench/etcd-cluster.sh` orders them).

use detcd::env::{Clock, Duration};
use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::{StatusRequest, StatusResponse};

use crate::options::Options;
use crate::report::json_string;

async fn status(endpoint: &str) -> Result<StatusResponse, String> {
    let channel = crate::conn::connect(endpoint).await?;
    let response = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await;
    Ok(response.map_err(|status| status.to_string())?.into_inner())
}

/// The endpoints, leader first, once all answer and agree on a leader that is among them.
async fn agreed(endpoints: &[String]) -> Result<Vec<String>, String> {
    let mut leader = None;
    let mut members = Vec::new();
    for endpoint in endpoints {
        let answer = status(endpoint).await?;
        let member = answer.header.map_or(0, |header| header.member_id);
        if answer.leader == 0 || leader.is_some_and(|leader| leader != answer.leader) {
            return Err(format!("{endpoint}: no agreed leader yet"));
        }
        leader = Some(answer.leader);
        members.push((endpoint.clone(), member));
    }
    let leader = leader.ok_or("no endpoints")?;
    let first = members.iter().position(|(_, member)| *member == leader);
    let first = first.ok_or("the leader is not among the endpoints")?;
    let leader_endpoint = members.remove(first);
    members.insert(0, leader_endpoint);
    Ok(members.into_iter().map(|(endpoint, _)| endpoint).collect())
}

pub async fn run(options: Options) -> Result<String, String> {
    let clock = Clock::new();
    let deadline = clock.now().plus(Duration::from_secs(options.timeout_secs));
    loop {
        match agreed(&options.endpoints).await {
            Ok(ordered) => {
                return Ok(format!(
                    "{{\"workload\":\"ready\",\"endpoints\":{}}}",
                    json_string(&ordered.join(","))
                ))
            }
            Err(error) if clock.now() >= deadline => {
                return Err(format!(
                    "not ready after {}s: {error}",
                    options.timeout_secs
                ))
            }
            Err(_) => clock.sleep(Duration::from_millis(100)).await,
        }
    }
}
