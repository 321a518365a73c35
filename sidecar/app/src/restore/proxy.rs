//! `proxy-v1` / `proxy-v2`: the app gets a clean header built by trueip, never the bytes the
//! load balancer sent: only validated addresses and the allowed TLVs, and a fresh CRC32c.

use trueip_proxy_header::{Addresses, Command, Header, Tlvs, Transport, Version};

use trueip_telemetry::Chain;

use crate::{detect::Detection, endpoints::Endpoints};
use trueip_sidecar_config::{ListenerConfig, Mode};

/// Builds the header re-emitted to the app.
#[derive(Debug)]
pub struct Reemit {
    version: Version,
    allowed: [bool; 256],
    crc32c: bool,
}

impl Reemit {
    pub(super) fn new(config: &ListenerConfig) -> Self {
        let mut allowed = [false; 256];
        for kind in &config.tlv_allow {
            allowed[usize::from(kind.0)] = true;
        }
        Self {
            version: if config.mode == Mode::ProxyV1 {
                Version::V1
            } else {
                Version::V2
            },
            allowed,
            crc32c: config.crc32c,
        }
    }

    pub(super) fn mode(&self) -> Mode {
        match self.version {
            Version::V1 => Mode::ProxyV1,
            Version::V2 => Mode::ProxyV2,
        }
    }

    /// The header for one connection: the endpoints as a `PROXY` command, and for v2 the
    /// received TLVs that the allow-list lets through.
    pub(super) fn header(&self, detection: &Detection, endpoints: Endpoints) -> Vec<u8> {
        let mut tlvs = match detection {
            Detection::Header { header, .. } if self.version == Version::V2 => header.tlvs.clone(),
            _ => Tlvs::default(),
        };
        tlvs.retain(|tlv| self.allowed[usize::from(tlv.kind)]);
        let header = Header {
            version: self.version,
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses: Addresses::Inet {
                source: endpoints.client.addr(),
                destination: endpoints.destination.addr(),
            },
            tlvs,
        };
        match self.version {
            Version::V1 => header.to_v1(),
            Version::V2 => header.to_v2(self.crc32c).unwrap_or_else(|e| {
                // Only a LOCAL/UNSPEC header near the 64 KiB limit, re-emitted with addresses,
                // can overflow; the app still gets the addresses.
                tracing::warn!(error = %Chain(&e), "re-emitted header too long; its TLVs are dropped");
                let bare = Header {
                    tlvs: Tlvs::default(),
                    ..header
                };
                bare.to_v2(self.crc32c)
                    .expect("a v2 header with two addresses and no TLVs fits")
            }),
        }
    }
}
