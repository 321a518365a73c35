//! trueip-sidecar between real peers — HAProxy, nginx, curl — in network namespaces.
//!
//! Every test builds its own [`Topology`](trueip_interop_tests::Topology) (client, LB, pod), so
//! they run in parallel, and asserts what a user would notice: the address nginx logged, the
//! bytes the app received.
//!
//! A test that cannot run here (no root, a missing peer or kernel feature, a peer too old)
//! returns a [`Skip`](trueip_test_kit::Skip) (`prereq::require`, `prereq::skip`): this
//! `harness = false` binary (the test kit's [`harness`]) reports it as ignored, never as passed:
//! `test <name> ... ignored (SKIPPED: <why>)`. The tests run in parallel, like libtest's.

mod curl;
mod differential;
mod ebpf;
mod exhaustion;
mod fast_path;
mod haproxy;
mod images;
mod kubelet;
mod nginx;
mod receivers;
mod senders;
mod soak;
mod steering;
mod transparent;
mod udp;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use trueip_interop_tests::Family;
use trueip_test_kit::harness::{self, Test, Threads};

/// Every test of this binary; a test function left out is dead code, which clippy refuses.
const TESTS: [(&str, Test); 40] = trueip_test_kit::tests![
    curl::curl_haproxy_protocol_from_an_untrusted_source_is_rejected,
    curl::curl_haproxy_protocol_to_proxy_v1_mode_nginx_logs_curl,
    differential::haproxy_and_trueip_agree_on_every_header,
    ebpf::ebpf_mode_a_restarted_sidecar_clears_what_a_killed_one_left,
    ebpf::ebpf_mode_accept_and_getpeername_return_the_client,
    ebpf::ebpf_mode_keeps_restoring_across_an_agent_restart,
    ebpf::ebpf_mode_nginx_default_log_shows_the_client,
    ebpf::ebpf_mode_survives_a_port_range_full_of_time_wait,
    ebpf::ebpf_mode_two_pods_never_see_each_others_clients,
    exhaustion::invalid_header_flood_does_not_stall_valid_connections,
    exhaustion::ten_thousand_silent_connections_are_closed_at_the_header_timeout,
    fast_path::fast_path_on_and_off_deliver_the_same_bytes,
    haproxy::header_from_an_untrusted_load_balancer_is_rejected,
    haproxy::send_proxy_v1_payload_reaches_the_app_intact,
    haproxy::send_proxy_v2_payload_reaches_the_app_intact,
    images::every_image_runs_its_entrypoint_from_its_own_root,
    kubelet::kubelet_cgroupfs_driver_runs_injected_pods,
    kubelet::kubelet_systemd_driver_runs_injected_pods,
    nginx::http_mode_nginx_realip_logs_the_client,
    nginx::send_proxy_v1_through_proxy_v2_mode_nginx_logs_the_client,
    nginx::send_proxy_v2_through_proxy_v1_mode_nginx_logs_the_client,
    nginx::without_trueip_nginx_logs_the_load_balancer,
    receivers::haproxy_apache_nginx_accept_every_reemitted_header_and_tshark_decodes_it,
    senders::curl_haproxy_clientip,
    senders::haproxy_tls_send_proxy_v2_tlvs_reach_the_app_exactly,
    senders::loxilb_shaped_header_glued_and_split_over_tcp,
    senders::nginx_stream_proxy_protocol_v1_sender,
    soak::soak_short_form_with_app_restart_and_graceful_drain,
    steering::steering_hands_lb_connections_to_the_sidecar_and_the_app_sees_the_client,
    steering::steering_nginx_on_its_own_port_logs_the_client,
    transparent::transparent_mode_app_sees_the_client_and_routing_is_cleaned_up,
    transparent::transparent_mode_nginx_default_log_shows_the_client,
    transparent::transparent_mode_taken_client_port_and_local_header,
    transparent::transparent_mode_without_net_admin_exits_with_a_clear_error,
    udp::udp_bad_datagrams_are_dropped_and_counted_by_reason,
    udp::udp_ebpf_mode_recvfrom_returns_the_client_and_replies_reach_it,
    udp::udp_ebpf_mode_refuses_an_agent_without_udp_hooks,
    udp::udp_flow_table_exhaustion_evicts_the_idle_longest,
    udp::udp_none_mode_relays_datagrams_both_ways,
    udp::udp_proxy_v2_mode_app_reads_the_client_from_a_clean_header,
];

fn main() -> ExitCode {
    harness::run(&TESTS, Threads::Parallel)
}

/// Where the sidecar listens in the pod (the port the load balancer targets).
const SIDECAR_PORT: u16 = 8080;

/// Where HAProxy listens for clients.
const LB_PORT: u16 = 80;

/// Upper bound for any single wait in these tests.
const TIMEOUT: Duration = Duration::from_secs(15);

/// `--trusted` for the load balancer's pod-side addresses, both families.
const TRUSTED_LB: [&str; 2] = ["192.0.2.1/32", "2001:db8:b::1/128"];

/// The sidecar's listen address for `family`.
fn sidecar_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.pod(), SIDECAR_PORT)
}

/// HAProxy's frontend for `family`.
fn lb_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.lb_front(), LB_PORT)
}
