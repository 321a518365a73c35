//! The agent's requests as OpenTelemetry spans: with the standard `OTEL_*` variables (what the
//! chart's `agent.otlp` sets) the agent exports one `agent.request` span per request on its
//! socket to the collector, and one `agent.refusal` span per caller it refuses at connect (a
//! process on the node), with an error status and the refusal's code.

use anyhow::{Context as _, ensure};
use trueip_sidecar_test_util::otlp::{Collector, attrs};

use crate::{
    Pod, need,
    support::{Agent, Placement, RoleChild},
};

/// The span of one request on the agent's socket.
const REQUEST_SPAN: &str = "agent.request";

/// The span of one connection refused before any request was read.
const REFUSAL_SPAN: &str = "agent.refusal";

pub(crate) fn requests_are_traced_over_otlp() -> anyhow::Result<()> {
    need()?;
    let (collector, addr) = Collector::start(false);
    let endpoint = format!("http://{addr}");
    let mut agent = Agent::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("K8S_NODE_NAME", "node-7"),
            ("K8S_POD_NAME", "trueip-agent-x7k2p"),
        ],
    )?;
    let pod = Pod::new()?;
    let sidecar = pod.ready_sidecar(&agent)?;
    // A process on the node asks too, and is refused.
    let socket = agent.socket.to_str().context("socket path")?.to_owned();
    let mut node = RoleChild::spawn(crate::attacker::ATTACK, &[&socket], &Placement::default())?;
    ensure!(node.line()? == "attacker ready");
    let answer = node.cmd("get-map 0")?;
    ensure!(answer.contains("ERR denied"), "{answer}");
    drop((sidecar, node));
    // SIGTERM flushes the spans not exported yet.
    agent.terminate()?;

    collector.wait_for_named(REFUSAL_SPAN, 1);
    let spans = collector.wait_for_named(REQUEST_SPAN, 1);
    let requests: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.name == REQUEST_SPAN)
        .map(|(resource, s)| (resource, attrs(&s.attributes), s))
        .collect();
    let (resource, _, _) = requests.first().context("no request span")?;
    for (k, v) in [
        ("service.name", "trueip-agent"),
        ("k8s.node.name", "node-7"),
        ("k8s.pod.name", "trueip-agent-x7k2p"),
    ] {
        ensure!(
            resource.get(k).map(String::as_str) == Some(v),
            "{k} in {resource:?}"
        );
    }
    let served = requests
        .iter()
        .find(|(_, a, s)| {
            a.get("trueip.agent.request").map(String::as_str) == Some("get-map")
                && s.status.as_ref().is_none_or(|st| st.code != 2)
        })
        .with_context(|| format!("no served get-map span in {requests:?}"))?;
    ensure!(
        served.1.contains_key("trueip.peer.pid") && served.1.contains_key("trueip.peer.uid"),
        "the caller's pid: {:?}",
        served.1
    );
    // Its events are the request's log lines: the map handed over.
    ensure!(
        served
            .2
            .events
            .iter()
            .any(|e| e.name.contains("handed a pod map")),
        "events of the served request: {:?}",
        served.2.events
    );
    let refused = spans
        .iter()
        .find(|(_, s)| s.name == REFUSAL_SPAN)
        .map(|(_, s)| (attrs(&s.attributes), s))
        .context("no refusal span")?;
    ensure!(
        refused.0.get("error.type").map(String::as_str) == Some("denied")
            && refused.0.contains_key("trueip.agent.refusal.reason"),
        "the refusal's code and reason: {:?}",
        refused.0
    );
    ensure!(
        refused.1.status.as_ref().is_some_and(|st| st.code == 2),
        "a refusal is an error span: {:?}",
        refused.1.status
    );
    Ok(())
}
