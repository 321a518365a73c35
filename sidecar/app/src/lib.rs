//! The trueip sidecar as a library: it accepts load-balancer connections, reads and validates
//! the PROXY header, and hands the plain stream to the app on loopback while the app learns the
//! real client address by the listener's restore mode.
//!
//! The modules follow the data path and depend downward only: [`listen`] accepts and hands each
//! connection to `connection`, which runs its steps: [`detect`] (which judges the header's
//! [`client`]) → [`endpoints`] (who the app is told it talks to) → [`restore`] (the app
//! connection in the listener's mode) → [`forward`]; an `http` listener's connections go to
//! the http mode (its own crate, `trueip-sidecar-http`) after detection instead, counting on the
//! listener's [`metrics`]. [`udp`] is the datagram path beside it, using
//! the same restore core for its `ebpf` fallback and map. [`metrics`] (TCP and UDP counters),
//! [`routing`] (`transparent`'s policy routing) and [`steer`] sit below them all, and the
//! [`config`] schema is its own crate.

#![forbid(unsafe_code)]

mod admin;
pub mod client;
/// The configuration schema (its own crate, which the injector uses too).
pub use trueip_sidecar_config as config;
mod connection;
pub mod detect;
pub mod endpoints;
pub mod forward;
pub mod listen;
pub mod metrics;
pub mod restore;
pub mod routing;
mod shutdown;
pub mod steer;
pub mod udp;

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::sync::watch;

pub use crate::{
    config::Config,
    listen::ListenError,
    metrics::{ListenerMetrics, SidecarMetrics},
};

/// All listeners of one configuration, bound and ready.
#[derive(Debug)]
pub struct Sidecar {
    listeners: Vec<listen::Listener>,
    udp_listeners: Vec<udp::UdpListener>,
    drain: std::time::Duration,
    registry: Arc<SidecarMetrics>,
    admin: Option<std::net::TcpListener>,
    admin_config: config::AdminConfig,
    /// The `transparent` mode's rules and routes; removed when the sidecar is dropped, after
    /// the last connection.
    routing: Option<routing::PolicyRouting>,
}

impl Sidecar {
    /// Binds every listener and the admin endpoint; fails if any cannot start.
    pub fn bind(config: &Config) -> Result<Self, ListenError> {
        let registry = Arc::new(SidecarMetrics::default());
        // Before any listener accepts: a transparent connection needs the replies routed back.
        let routing = Self::transparent_families(config)
            .map(|families| routing::PolicyRouting::install(config.transparent, &families))
            .transpose()
            .map_err(ListenError::Routing)?;
        let (udp, tcp): (Vec<_>, Vec<_>) = config
            .listeners
            .iter()
            .partition(|l| l.protocol == config::Protocol::Udp);
        let listeners = tcp
            .into_iter()
            .map(|l| listen::Listener::bind(l.clone(), &config.agent_socket, &registry))
            .collect::<Result<_, _>>()?;
        let udp_listeners = udp
            .into_iter()
            .map(|l| udp::UdpListener::bind(l.clone(), &config.agent_socket, &registry))
            .collect::<Result<_, _>>()?;
        let admin = config
            .metrics_listen
            .map(|addr| {
                let socket = std::net::TcpListener::bind(addr)?;
                socket.set_nonblocking(true)?;
                tracing::info!(listen = %socket.local_addr()?, "serving /metrics, /healthz, /readyz");
                Ok(socket)
            })
            .transpose()
            .map_err(|source| ListenError::Admin {
                addr: config.metrics_listen.unwrap_or(([0, 0, 0, 0], 0).into()),
                source,
            })?;
        Ok(Self {
            listeners,
            udp_listeners,
            drain: config.drain_timeout,
            registry,
            admin,
            admin_config: config.admin.clone(),
            routing,
        })
    }

    /// The address families of the `transparent` listeners' apps, if there are any.
    fn transparent_families(config: &Config) -> Option<Vec<routing::Family>> {
        let mut families: Vec<_> = config
            .listeners
            .iter()
            .filter(|l| l.mode == config::Mode::Transparent)
            .map(|l| routing::Family::of(l.upstream.ip()))
            .collect();
        families.sort_unstable();
        families.dedup();
        (!families.is_empty()).then_some(families)
    }

    /// The admin endpoint's bound address, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Every listener's metrics, as `/metrics` serves them.
    pub fn registry(&self) -> Arc<SidecarMetrics> {
        Arc::clone(&self.registry)
    }

    /// Each listener's name and bound address (TCP listeners, then UDP ones, each in the
    /// configuration's order).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let tcp = self
            .listeners
            .iter()
            .filter_map(|l| Some((l.name().to_owned(), l.local_addr().ok()?)));
        let udp = self
            .udp_listeners
            .iter()
            .filter_map(|l| Some((l.name().to_owned(), l.local_addr().ok()?)));
        tcp.chain(udp).collect()
    }

    /// Each UDP listener's name and counters.
    pub fn udp_metrics(&self) -> Vec<(String, Arc<udp::UdpMetrics>)> {
        self.udp_listeners
            .iter()
            .map(|l| (l.name().to_owned(), l.metrics()))
            .collect()
    }

    /// Each listener's name and counters.
    pub fn metrics(&self) -> Vec<(String, Arc<ListenerMetrics>)> {
        self.listeners
            .iter()
            .map(|l| (l.name().to_owned(), l.metrics()))
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains open connections up
    /// to the configured deadline. Returns the number of connections cut at the deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let readiness = Arc::new(admin::Readiness::new(
            self.listeners
                .iter()
                .map(listen::Listener::readiness)
                .chain(self.udp_listeners.iter().map(udp::UdpListener::readiness))
                .collect(),
        ));
        let admin = self.admin.map(|socket| {
            tokio::spawn(admin::serve(
                socket,
                Arc::clone(&self.registry),
                Arc::clone(&readiness),
                self.admin_config,
            ))
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks: Vec<_> = self
            .listeners
            .into_iter()
            .map(|l| tokio::spawn(l.serve(stopped.clone(), self.drain)))
            .collect();
        tasks.extend(
            self.udp_listeners
                .into_iter()
                .map(|l| tokio::spawn(l.serve(stopped.clone()))),
        );
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining open ones");
        readiness.drain();
        let _ = stop.send(true);
        let mut cut = 0;
        for task in tasks {
            cut += task.await.unwrap_or(0);
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        drop(self.routing);
        cut
    }
}
