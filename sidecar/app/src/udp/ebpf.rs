//! `ebpf` for UDP: each flow is recorded in the pod map (the one the agent hands over for TCP,
//! asked for with `GET-MAP udp` so that the agent makes sure the pod's recvmsg/sendmsg hooks are
//! attached) before its first datagram reaches the app, and forgotten when the flow closes.

use std::{path::Path, sync::Arc};

use trueip_addrs::{ClientAddr, SidecarAddr};
use trueip_agent_client::{InsertError, PodMap, UdpFlow};

use super::inbound::Dropped;
use trueip_telemetry::Chain;

use crate::{metrics::RestoreOutcome, restore::EbpfError};
use trueip_sidecar_config::MapFullPolicy;

/// The eBPF restore mode of one UDP listener.
#[derive(Debug)]
pub(super) struct UdpEbpf {
    map: Arc<PodMap>,
    on_full: MapFullPolicy,
}

/// A flow's entries; dropping it removes them.
#[derive(Debug)]
pub(super) struct FlowEntry {
    map: Arc<PodMap>,
    flow: UdpFlow,
}

impl Drop for FlowEntry {
    fn drop(&mut self) {
        if let Err(e) = self.map.remove_udp_flow(&self.flow) {
            tracing::warn!(error = %Chain(&e), flow = ?self.flow, "could not remove a UDP flow's eBPF entries");
        }
    }
}

impl UdpEbpf {
    pub(super) fn open(socket: &Path, on_full: MapFullPolicy) -> Result<Self, EbpfError> {
        let map = PodMap::connect_udp(socket).map_err(|source| EbpfError {
            socket: socket.display().to_string(),
            source,
        })?;
        tracing::info!(socket = %socket.display(), "obtained this pod's restore map (UDP hooks) from the agent");
        crate::restore::ebpf::clear_stale(&map);
        Ok(Self {
            map: Arc::new(map),
            on_full,
        })
    }

    /// Records that the flow socket `sidecar` sends `client`'s datagrams to the app's
    /// `app_port`. A full map delivers unrestored or drops the datagram, as configured.
    pub(super) fn record(
        &self,
        app_port: u16,
        sidecar: SidecarAddr,
        client: ClientAddr,
    ) -> Result<(Option<FlowEntry>, RestoreOutcome), Dropped> {
        let flow = UdpFlow {
            app_port,
            sidecar,
            client,
        };
        match self.map.insert_udp_flow(&flow) {
            Ok(()) => Ok((
                Some(FlowEntry {
                    map: Arc::clone(&self.map),
                    flow,
                }),
                RestoreOutcome::Restored,
            )),
            Err(InsertError::Full) if self.on_full == MapFullPolicy::Refuse => Err(Dropped {
                reason: "map_full",
                detail: "the pod's restore map is full (on_map_full: refuse)".into(),
            }),
            Err(InsertError::Full) => {
                tracing::warn!(
                    ?flow,
                    "the pod's restore map is full; relaying the flow without restoration"
                );
                Ok((None, RestoreOutcome::MapFull))
            }
            Err(e) => {
                tracing::warn!(?flow, error = %Chain(&e), "could not write a UDP flow's eBPF entries; relaying without restoration");
                Ok((None, RestoreOutcome::Failed))
            }
        }
    }
}
