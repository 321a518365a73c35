//! The whole install, the way a cluster runs it, without a cluster: the chart rendered by `helm`,
//! its agent DaemonSet and injector Deployment run from the images `make images` built, two
//! Deployments' pods created through the real webhook (AdmissionReview over TLS, trusting the
//! rendered `caBundle`), and the mutated pods run by the kubelet stand-in
//! ([`trueip_interop_tests::kubelet`]) with the cgroup layout of the systemd or the cgroupfs
//! driver — the agent in its production default `--pod-cgroup auto` — behind HAProxy sending
//! PROXY v2. The unmodified apps' own `accept()` must return their clients, IPv4 and IPv6, and
//! neither pod may see the other's.
//!
//! The two apps cover both ways of exposing a port: `web` lists its port alone
//! (`trueip.io/ports: "8080"`): it keeps it and the Service targets it, the agent steers outside
//! connections to the sidecar; `api` gives a pair (`8080:9000`): the Service targets the
//! sidecar's 8080 and the app listens on loopback 9000.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use trueip_interop_tests::{
    Family, Topology,
    app::{Conn, Served},
    cluster::{self, Helm, Webhook},
    haproxy::{self, Route, SendProxy},
    kubelet::{CgroupDriver, Node, Qos, RunningPod},
    oci::{self, Image},
    tls::Pki,
};
use trueip_test_kit::kube;
use trueip_test_kit::{
    Need,
    names::{PREFIX, unique_suffix},
    prereq::{self, require, skip},
    run,
};

use crate::{LB_PORT, TIMEOUT};

/// What the test runs on.
const NEEDS: [Need; 4] = [Need::Haproxy, Need::Sidecar, Need::Agent, Need::Curl];

/// The images the chart installs.
const IMAGES: [&str; 3] = ["trueip-agent", "trueip-injector", "trueip-sidecar"];

/// The test app's image: the node runs it from its own root (`trueip-echo-app` is built there).
const APP_IMAGE: &str = "registry.example/shop/echo-app:1";

/// The port both apps are reached on from the load balancer (the Services' `targetPort`).
const SERVICE_PORT: u16 = 8080;

/// Connections per pod and family, all open at once.
const ROUNDS: usize = 3;

pub(crate) fn kubelet_systemd_driver_runs_injected_pods() -> Result<()> {
    install_and_serve(CgroupDriver::Systemd)
}

pub(crate) fn kubelet_cgroupfs_driver_runs_injected_pods() -> Result<()> {
    install_and_serve(CgroupDriver::Cgroupfs)
}

/// One app Deployment: its name, its annotations and the address its app listens on.
struct App {
    name: &'static str,
    ports: &'static str,
    listen: &'static str,
}

const APPS: [App; 2] = [
    App {
        name: "web",
        ports: "8080",
        listen: "[::]:8080",
    },
    App {
        name: "api",
        ports: "8080:9000",
        listen: "[::]:9000",
    },
];

fn install_and_serve(driver: CgroupDriver) -> Result<()> {
    require(&NEEDS)?;
    let helm = Helm::find()?;
    let archives = oci::archive_dir();
    for name in IMAGES {
        if !archives.join(format!("{name}.tar")).is_file() {
            return Err(skip(format!(
                "{}/{name}.tar is missing: `make images` builds it (make test does)",
                archives.display()
            )));
        }
    }
    let echo_app = prereq::own_binary("trueip-echo-app")?;
    let topo = Topology::with_two_pods()?;
    let dir = topo.dir().to_owned();

    // The node (its kubelet's cgroup tree below a cgroup of this run, the root of the node's
    // cgroup namespace).
    let mut node = Node::new("node-1", driver, &topo.lb, &dir)?;

    // The operator: `helm install` with the webhook's certificate from a Secret, sidecars that
    // serve IPv4 and IPv6 and trust the load balancer, the agent's socket and pins where this
    // run cleans up, and the node's cgroup root.
    let pki = Pki::generate_for(&dir, "trueip-injector.trueip.svc")?;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&pki.ca_cert)?);
    let pins = format!("{PREFIX}{}", unique_suffix());
    let trusted: Vec<String> = Family::BOTH
        .iter()
        .flat_map(|f| [f.lb_back(), f.lb_back2()])
        .map(ipnet_of)
        .collect();
    let flags: Vec<String> = vec![
        "--set=injector.tls.source=secret".into(),
        "--set=injector.tls.secretName=trueip-injector-tls".into(),
        format!("--set=injector.tls.caBundle={ca_b64}"),
        format!(
            "--set=agent.socketPath={}/run/trueip/agent.sock",
            dir.display()
        ),
        format!("--set=agent.bpffsSubdir={pins}"),
        format!(
            "--set=agent.hostPaths.cgroup={}",
            node.cgroup_root().display()
        ),
        "--set=sidecar.listenAddress=::".into(),
        "--set=sidecar.upstreamAddress=::1".into(),
        format!("--set-json=sidecar.trustedCIDRs={}", json!(trusted)),
    ];
    let docs = helm.template(&flags)?;
    let _pins = RemoveOnDrop(std::path::Path::new(prereq::BPFFS).join(&pins));

    // The node's images, and the objects the control plane holds.
    for name in IMAGES {
        let unpacked = dir.join("images").join(name);
        node.load_image(Image::unpack(
            &archives.join(format!("{name}.tar")),
            &unpacked,
        )?);
    }
    node.host_image(APP_IMAGE);
    node.add_objects(
        docs.iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .cloned()
            .chain([tls_secret(&pki)?]),
    );

    // The chart's own pods, in the node's network (where HAProxy also runs).
    let node_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let agent = node.run_pod(
        &cluster::pod_from_template(
            kube::find(&docs, "DaemonSet", Some("trueip-agent"))?,
            "trueip-agent-x7k2p",
            "6a1f1c0e-0000-4000-8000-00000000a6e1",
        ),
        &topo.lb,
        node_ip,
    )?;
    let injector = node.run_pod(
        &cluster::pod_from_template(
            kube::find(&docs, "Deployment", Some("trueip-injector"))?,
            "trueip-injector-5d9c7b-q2w4z",
            "6a1f1c0e-0000-4000-8000-00000000c0de",
        ),
        &topo.lb,
        node_ip,
    )?;
    for pod in [&agent, &injector] {
        wait_ready(&node, pod)?;
    }

    // The apiserver: the namespace is opted in; each Deployment's pod goes through the webhook
    // at the injector's port (what the Service's `targetPort: https` resolves to).
    let webhook_port = injector.spec["spec"]["containers"][0]["ports"][0]["containerPort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("the injector's container port")?;
    let webhook = Webhook::from_render(
        &docs,
        &topo.lb,
        SocketAddr::new(node_ip, webhook_port),
        &dir,
    )?;
    let shop = json!({"kubernetes.io/metadata.name": "shop", "trueip.io/inject": "enabled"});
    ensure!(
        webhook.selects(&shop)?,
        "the webhook would not be called for {shop}"
    );
    ensure!(
        !webhook.selects(&json!({"kubernetes.io/metadata.name": "shop"}))?,
        "the webhook would be called for a namespace that did not opt in"
    );
    let netns = [&topo.pod, topo.pod2()?];
    let addrs: [fn(Family) -> IpAddr; 2] = [Family::pod, Family::pod2];
    let mut pods: Vec<RunningPod> = Vec::new();
    for (i, app) in APPS.iter().enumerate() {
        let deployment = deployment(app, &echo_app);
        let pod = cluster::pod_from_template(
            &deployment,
            &format!("{}-7f8b9c-{i}x4kq", app.name),
            &format!("0b6e7c4d-1111-4222-8333-00000000000{i}"),
        );
        let admitted = webhook.admit(&pod)?;
        ensure!(
            admitted.patched,
            "{}: not injected ({:?})",
            app.name,
            admitted.warnings
        );
        let mutated = &admitted.pod;
        ensure!(
            mutated["metadata"]["labels"]["trueip.io/injected"] == "ebpf",
            "{}: labels {}",
            app.name,
            mutated["metadata"]["labels"]
        );
        if i == 0 {
            edited_configuration_is_refused(&node, mutated, netns[1], addrs[1](Family::V4))?;
        }
        let running = node
            .run_pod(mutated, netns[i], addrs[i](Family::V4))
            .with_context(|| format!("running {}", app.name))?;
        pods.push(running);
    }
    for pod in &pods {
        wait_ready(&node, pod)?;
        check_cgroups(&node, pod, driver)?;
    }

    // The load balancer in front, one frontend per app, both families; then clients.
    let routes: Vec<Route> = Family::BOTH
        .iter()
        .flat_map(|&family| {
            addrs
                .iter()
                .zip(LB_PORT..)
                .map(move |(addr, lb_port)| Route {
                    bind: SocketAddr::new(family.lb_front(), lb_port),
                    server: SocketAddr::new(addr(family), SERVICE_PORT),
                    send_proxy: SendProxy::V2,
                })
        })
        .collect();
    let _lb = haproxy::start(&topo, &routes)?;
    let mut open: [Vec<Conn>; 2] = Default::default();
    for _ in 0..ROUNDS {
        for family in Family::BOTH {
            for (conns, lb_port) in open.iter_mut().zip(LB_PORT..) {
                conns.push(Conn::open(
                    &topo.client,
                    SocketAddr::new(family.lb_front(), lb_port),
                )?);
            }
        }
    }
    for ((conns, pod), app) in open.into_iter().zip(&mut pods).zip(&APPS) {
        let mut clients = conns
            .into_iter()
            .map(|conn| conn.finish(app.name.as_bytes()).map(|reply| reply.local))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("{}:\n{}\n{}", app.name, pod.logs(), agent.logs()))?;
        let served = served(pod, app.name, clients.len())?;
        let mut accepted: Vec<SocketAddr> = served
            .iter()
            .filter_map(|s| s.accept)
            .map(canonical)
            .collect();
        clients.sort_unstable();
        accepted.sort_unstable();
        ensure!(
            accepted == clients,
            "{} ({driver:?}): its clients were {clients:?}, its accept() returned \
             {accepted:?}\n{}\n{}",
            app.name,
            pod.logs(),
            agent.logs()
        );
    }

    // A pod the webhook missed (down, with `failurePolicy: Ignore`): `web`'s Service targets
    // the app's own port, so its traffic still reaches the app, as the load balancer sent it
    // (the PROXY header in front, which no sidecar strips) — no hole where nothing listens. It
    // runs where `api` ran (a pair: no steering was ever attached in that network namespace),
    // behind the same frontend.
    drop(pods.remove(1));
    let missed = cluster::pod_from_template(
        &deployment(&APPS[0], &echo_app),
        "web-7f8b9c-m1ss3",
        "0b6e7c4d-1111-4222-8333-0000000000ff",
    );
    let mut missed = node.run_pod(&missed, topo.pod2()?, Family::V4.pod2())?;
    let reply = Conn::open(
        &topo.client,
        SocketAddr::new(Family::V4.lb_front(), LB_PORT + 1),
    )?
    .finish(b"no hole")?;
    let served = served(&mut missed, "web", 1)?;
    let peer = served[0].accept.map(canonical).map(|a| a.ip());
    ensure!(
        peer == Some(Family::V4.lb_back2())
            && reply.bytes.starts_with(&trueip_proxy_header::V2_SIGNATURE)
            && reply.bytes.ends_with(b"no hole"),
        "without the sidecar the app should get the load balancer's bytes: peer {peer:?}, \
         {} bytes back",
        reply.bytes.len()
    );
    Ok(())
}

/// A tenant who may edit its pod changes the sidecar's configuration annotation after
/// admission (here: trusting everyone), and the kubelet writes it to the file: the sidecar
/// refuses to start, since the file no longer has the digest its arguments pin.
fn edited_configuration_is_refused(
    node: &Node<'_>,
    admitted: &Value,
    netns: &trueip_test_kit::Netns,
    ip: IpAddr,
) -> Result<()> {
    let mut edited = admitted.clone();
    let annotation = &mut edited["metadata"]["annotations"]["trueip.io/sidecar-config"];
    let text = annotation
        .as_str()
        .context("no sidecar-config annotation")?;
    let forged = text.replace("trusted_sources:", "trusted_sources:\n  - 0.0.0.0/0");
    ensure!(forged != text, "nothing to edit in {text}");
    *annotation = Value::String(forged);
    edited["metadata"]["name"] = json!("web-edited");
    edited["metadata"]["uid"] = json!("0b6e7c4d-1111-4222-8333-0000000000ee");
    let refused = node
        .run_pod(&edited, netns, ip)
        .err()
        .context("a sidecar ran a configuration changed after admission")?;
    ensure!(
        format!("{refused:?}").contains("refusing to start"),
        "the sidecar should say why it refuses: {refused:?}"
    );
    Ok(())
}

/// The app's Deployment as a user writes it: the port annotation and an unmodified server.
fn deployment(app: &App, echo_app: &std::path::Path) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app.name, "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app.name}},
            "template": {
                "metadata": {
                    "labels": {"app": app.name},
                    "annotations": {"trueip.io/ports": app.ports},
                },
                "spec": {
                    "containers": [{
                        "name": app.name,
                        "image": APP_IMAGE,
                        "command": [echo_app.display().to_string()],
                        "args": [app.listen],
                        "ports": [{"containerPort": SERVICE_PORT}],
                    }],
                },
            },
        },
    })
}

/// The webhook's serving certificate, as `injector.tls.source=secret` expects it.
fn tls_secret(pki: &Pki) -> Result<Value> {
    let b64 = |path: &std::path::Path| -> Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(path)?))
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "trueip-injector-tls", "namespace": cluster::RELEASE},
        "data": {"tls.crt": b64(&pki.server_cert)?, "tls.key": b64(&pki.server_key)?},
    }))
}

/// Waits until every readiness probe of `pod` passes.
fn wait_ready(node: &Node<'_>, pod: &RunningPod) -> Result<()> {
    run::wait_for(&format!("pod {} to be Ready", pod.name), TIMEOUT, || {
        node.ready(pod).map(|ready| ready.then_some(()))
    })
    .with_context(|| pod.logs())
}

/// The pod's containers sit where the driver puts them, and the sidecar's is a container of a
/// burstable pod (its resources requests).
fn check_cgroups(node: &Node<'_>, pod: &RunningPod, driver: CgroupDriver) -> Result<()> {
    ensure!(pod.qos == Qos::Burstable, "{}: QoS {:?}", pod.name, pod.qos);
    let uid = pod.spec["metadata"]["uid"].as_str().unwrap_or_default();
    let pod_cgroup = node.pod_cgroup_path(pod.qos, uid);
    let sidecar = pod
        .container_cgroup("trueip-sidecar")
        .context("no sidecar cgroup")?;
    ensure!(
        sidecar.parent() == Some(pod_cgroup.as_path()),
        "{}: sidecar cgroup {} is not below {}",
        pod.name,
        sidecar.display(),
        pod_cgroup.display()
    );
    let shape = pod_cgroup
        .strip_prefix(node.cgroup_root())
        .context("pod cgroup")?
        .display()
        .to_string();
    let expected = match driver {
        CgroupDriver::Systemd => format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ),
        CgroupDriver::Cgroupfs => format!("kubepods/burstable/pod{uid}"),
    };
    ensure!(shape == expected, "{}: pod cgroup {shape}", pod.name);
    let leaf = sidecar
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let scope = match driver {
        CgroupDriver::Systemd => leaf.starts_with("cri-containerd-") && leaf.ends_with(".scope"),
        CgroupDriver::Cgroupfs => leaf.len() == 64,
    };
    ensure!(scope, "{}: container cgroup {leaf}", pod.name);
    Ok(())
}

/// Waits for `n` connections to have ended in the app container of `pod`.
fn served(pod: &mut RunningPod, container: &str, n: usize) -> Result<Vec<Served>> {
    let proc = pod.container(container)?;
    run::wait_for(
        &format!("{container} to serve {n} connections"),
        TIMEOUT,
        || {
            proc.ensure_running()?;
            let done: Vec<Served> = proc
                .log()
                .lines()
                .filter_map(|l| Served::parse(l, trueip_interop_tests::app::SERVED))
                .collect();
            Ok((done.len() >= n).then_some(done))
        },
    )
}

/// A v4 client on a dual-stack socket shows as `::ffff:a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `ip` as a one-address CIDR.
fn ipnet_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Removes a directory when dropped (the agent's pins: pinned links keep programs attached).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
