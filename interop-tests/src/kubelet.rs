//! A stand-in for what a kubelet with containerd does with a pod spec, for the end-to-end test of
//! the chart, the webhook, the agent and the sidecar together: no kubelet, apiserver or container
//! runtime can run on this machine (crun refuses its hybrid cgroup layout), so this does their
//! part with the real binaries, from the real images.
//!
//! For each pod it creates the cgroups the kubelet's cgroup driver would —
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope`
//! (systemd) or `kubepods/<qos>/pod<uid>/<id>` (cgroupfs), the QoS class computed from the
//! containers' resources as the kubelet does — and starts each container in it, in the pod's
//! network namespace:
//!
//! * from its image's unpacked root (`chroot`), or, for images the test names, from the node's
//!   own root (an unmodified app installed on the test machine);
//! * with `command`/`args` over the image's `Entrypoint`/`Cmd`, the image's `Env` and the
//!   container's `env` (literal values and the downward API's `fieldRef`s), and nothing of the
//!   test's own environment;
//! * as `securityContext.runAsUser`/`runAsGroup` (the container's, else the pod's, else the
//!   image's `User`);
//! * with its `volumeMounts` bind-mounted in a mount namespace of its own: `downwardAPI` (files
//!   from annotations and labels), `hostPath`, `configMap` and `secret` (from the objects given
//!   to the [`Node`]) and `emptyDir`; `/proc`, `/sys` and `/dev` as a runtime provides them.
//!
//! Init containers run in order: a native sidecar (`restartPolicy: Always`) is started and its
//! `startupProbe` awaited before the next one; others must exit 0. Then the app containers start.
//! Probes (`tcpSocket`, `httpGet`) are made from the node's network namespace to the pod's
//! address, as the kubelet makes them. Not done: image pulls, the pause container, restarts,
//! resource limits (the cgroups have no controllers enabled), pid and user namespaces, seccomp
//! and capability sets beyond what the user switch gives.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::Value;

use crate::oci::Image;
use trueip_test_kit::{
    cgroup::Cgroup,
    netns::Netns,
    process::{Launch, Proc},
    run,
};

/// How long the stand-in waits between two tries of a probe (the kubelet waits
/// `periodSeconds`; the bound on the total wait is the same).
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// A probe's connection and answer take at most this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a run-to-completion init container may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The kubelet's `--cgroup-driver`: how pod and container cgroups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// systemd slices and scopes (`kubepods.slice/…/cri-containerd-<id>.scope`).
    Systemd,
    /// Plain directories (`kubepods/burstable/pod<uid>/<id>`).
    Cgroupfs,
}

/// A pod's quality-of-service class, which picks its parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Every container has limits equal to its requests for CPU and memory.
    Guaranteed,
    /// Some container requests or limits something.
    Burstable,
    /// Nothing requested or limited.
    BestEffort,
}

impl Qos {
    /// The class of `spec`, as the kubelet computes it (`pkg/apis/core/v1/helper/qos`): init
    /// containers count like the others.
    pub fn of(spec: &Value) -> Self {
        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .collect();
        let any = containers.iter().any(|c| {
            ["requests", "limits"].iter().any(|k| {
                c["resources"][*k]
                    .as_object()
                    .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
            })
        });
        if !any {
            return Self::BestEffort;
        }
        let guaranteed = containers.iter().all(|c| {
            ["cpu", "memory"].iter().all(|r| {
                let limit = &c["resources"]["limits"][*r];
                let request = &c["resources"]["requests"][*r];
                !limit.is_null() && (request.is_null() || request == limit)
            })
        });
        if guaranteed {
            Self::Guaranteed
        } else {
            Self::Burstable
        }
    }

    fn name(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }
}

impl CgroupDriver {
    /// The node-level cgroup every pod is below.
    fn top(self) -> &'static str {
        match self {
            Self::Systemd => "kubepods.slice",
            Self::Cgroupfs => "kubepods",
        }
    }

    /// The QoS class's cgroup below [`top`](Self::top).
    fn qos_dir(self, qos: &'static str) -> String {
        match self {
            Self::Systemd => format!("kubepods-{qos}.slice"),
            Self::Cgroupfs => qos.to_owned(),
        }
    }

    /// A pod's cgroup below its QoS parent (systemd escapes the uid's `-` as `_`).
    fn pod_dir(self, qos: Qos, uid: &str) -> String {
        match (self, qos.name()) {
            (Self::Systemd, Some(q)) => format!("kubepods-{q}-pod{}.slice", uid.replace('-', "_")),
            (Self::Systemd, None) => format!("kubepods-pod{}.slice", uid.replace('-', "_")),
            (Self::Cgroupfs, _) => format!("pod{uid}"),
        }
    }

    /// A container's cgroup below its pod's, as containerd names it.
    fn container_dir(self, id: &str) -> String {
        match self {
            Self::Systemd => format!("cri-containerd-{id}.scope"),
            Self::Cgroupfs => id.to_owned(),
        }
    }
}

/// The node: its cgroup layout, the images it has, the objects volumes come from, and the
/// network probes are made from.
#[derive(Debug)]
pub struct Node<'a> {
    /// The node's name (`spec.nodeName` of its pods).
    pub name: String,
    driver: CgroupDriver,
    network: &'a Netns,
    scratch: PathBuf,
    images: Vec<Image>,
    host_images: Vec<String>,
    objects: Vec<Value>,
    /// The QoS parents (deepest last), removed after every pod.
    qos: Vec<Cgroup>,
    /// The process holding the node's cgroup namespace, whose root is [`Node::cgroup_root`]:
    /// every container joins it.
    cgroupns: Proc,
    /// Where the node's cgroup tree starts: a `tip-<pid>-<n>` cgroup of this run, never the
    /// machine's own `kubepods` (a real node's pods live there).
    root: Cgroup,
}

impl<'a> Node<'a> {
    /// A node whose kubelet uses `driver`, making probes from `network` and keeping volumes in
    /// `scratch`. Its cgroup tree — the `kubepods` cgroup and the QoS classes' — is made below a
    /// cgroup of this run, the root of a cgroup namespace every container joins: inside it the
    /// paths are the kubelet's (`/kubepods.slice/…`), and the machine's own cgroups (a real
    /// node's pods) are never touched.
    pub fn new(
        name: &str,
        driver: CgroupDriver,
        network: &'a Netns,
        scratch: &Path,
    ) -> Result<Self> {
        let root = Cgroup::create()?;
        let mut cgroupns = Launch::new("cgroup-namespace", "unshare")
            .args(["--cgroup", "--", "sleep", "infinity"])
            .cgroup(&root)
            .spawn(scratch)?;
        let own = fs::read_link("/proc/self/ns/cgroup")?;
        let holder = PathBuf::from(format!("/proc/{}/ns/cgroup", cgroupns.pid()));
        run::wait_for("the node's cgroup namespace", PROBE_TIMEOUT * 10, || {
            cgroupns.ensure_running()?;
            Ok(fs::read_link(&holder)
                .ok()
                .filter(|ns| *ns != own)
                .map(drop))
        })?;
        let top = Cgroup::create_in(root.path(), driver.top())?;
        let mut qos = Vec::new();
        for class in ["burstable", "besteffort"] {
            qos.push(Cgroup::create_in(top.path(), &driver.qos_dir(class))?);
        }
        qos.insert(0, top);
        Ok(Self {
            name: name.to_owned(),
            driver,
            network,
            scratch: scratch.to_owned(),
            images: Vec::new(),
            host_images: Vec::new(),
            objects: Vec::new(),
            qos,
            cgroupns,
            root,
        })
    }

    /// The node's cgroup root (what the agent DaemonSet's `hostPaths.cgroup` must be here).
    pub fn cgroup_root(&self) -> &Path {
        self.root.path()
    }

    /// Makes `image` available under its reference.
    pub fn load_image(&mut self, image: Image) {
        self.images.push(image);
    }

    /// Runs containers of `reference` from the node's own root instead of an image (the
    /// test's unmodified app, installed on the machine).
    pub fn host_image(&mut self, reference: &str) {
        self.host_images.push(reference.to_owned());
    }

    /// ConfigMaps and Secrets that `configMap` and `secret` volumes refer to.
    pub fn add_objects(&mut self, objects: impl IntoIterator<Item = Value>) {
        self.objects.extend(objects);
    }

    /// The cgroup of a pod of class `qos` with `uid`, below [`Node::cgroup_root`].
    pub fn pod_cgroup_path(&self, qos: Qos, uid: &str) -> PathBuf {
        let mut path = self.qos[0].path().to_owned();
        if let Some(q) = qos.name() {
            path.push(self.driver.qos_dir(q));
        }
        path.join(self.driver.pod_dir(qos, uid))
    }

    /// Runs `pod` (an apiserver object: `metadata.uid` set) in `netns`, reachable at `ip` from
    /// the node's network: volumes, init containers in order, then the app containers.
    pub fn run_pod(&self, pod: &Value, netns: &Netns, ip: IpAddr) -> Result<RunningPod> {
        let mut pod = pod.clone();
        pod["spec"]["nodeName"] = Value::String(self.name.clone());
        pod["status"]["podIP"] = Value::String(ip.to_string());
        let name = text(&pod["metadata"]["name"], "metadata.name")?.to_owned();
        let uid = text(&pod["metadata"]["uid"], "metadata.uid")?.to_owned();
        let qos = Qos::of(&pod["spec"]);
        let cgroup_path = self.pod_cgroup_path(qos, &uid);
        let parent = cgroup_path.parent().context("pod cgroup parent")?;
        let cgroup = Cgroup::create_in(parent, &self.driver.pod_dir(qos, &uid))?;
        let volumes = self.volumes(&pod, &name)?;
        let mut running = RunningPod {
            name,
            ip,
            spec: pod.clone(),
            qos,
            netns: netns.path(),
            containers: Vec::new(),
            cgroup: Some(cgroup),
        };
        for init in pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let sidecar = init["restartPolicy"] == "Always";
            let mut started = self.start(&running, init, &volumes)?;
            if sidecar {
                if let Some(probe) = init.get("startupProbe") {
                    self.await_probe(&mut started, init, probe, ip)
                        .with_context(|| format!("the startup probe of {}", started.name))?;
                }
                running.containers.push(started);
            } else {
                let status = started.proc.wait_exit(INIT_TIMEOUT);
                ensure!(
                    status.is_some_and(|s| s.success()),
                    "init container {} ended with {status:?}:\n{}",
                    started.name,
                    started.proc.log_tail()
                );
            }
        }
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let started = self.start(&running, container, &volumes)?;
            running.containers.push(started);
        }
        Ok(running)
    }

    /// Whether every readiness probe of `pod` passes now (what makes it a Service endpoint).
    pub fn ready(&self, pod: &RunningPod) -> Result<bool> {
        for list in ["initContainers", "containers"] {
            for c in pod.spec["spec"][list].as_array().into_iter().flatten() {
                if let Some(probe) = c.get("readinessProbe")
                    && !self.probe_once(c, probe, pod.ip)?
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The pod's volumes as directories of the node: name → host path.
    fn volumes(&self, pod: &Value, pod_name: &str) -> Result<BTreeMap<String, PathBuf>> {
        let mut paths = BTreeMap::new();
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = text(&volume["name"], "volume name")?;
            let dir = self.scratch.join("volumes").join(pod_name).join(name);
            let path = if let Some(host) = volume.get("hostPath") {
                let path = PathBuf::from(text(&host["path"], "hostPath.path")?);
                match host["type"].as_str().unwrap_or_default() {
                    // As the kubelet: 0755 for a directory it creates, an existing one as it is.
                    "DirectoryOrCreate" if !path.exists() => {
                        fs::create_dir_all(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                    }
                    "DirectoryOrCreate" => ensure!(
                        path.is_dir(),
                        "hostPath {} of volume {name} is not a directory",
                        path.display()
                    ),
                    "" | "Directory" | "Socket" | "File" => ensure!(
                        path.exists(),
                        "hostPath {} of volume {name} does not exist",
                        path.display()
                    ),
                    other => bail!("hostPath type {other} is not supported here"),
                }
                path
            } else if let Some(downward) = volume.get("downwardAPI") {
                let mut files = BTreeMap::new();
                for item in downward["items"].as_array().into_iter().flatten() {
                    let value = field(pod, text(&item["fieldRef"]["fieldPath"], "fieldPath")?)?;
                    files.insert(text(&item["path"], "path")?.to_owned(), value.into_bytes());
                }
                write_files(&dir, &files)?;
                dir
            } else if let Some(source) = volume.get("configMap").or_else(|| volume.get("secret")) {
                let (kind, key) = if volume.get("configMap").is_some() {
                    ("ConfigMap", "name")
                } else {
                    ("Secret", "secretName")
                };
                let wanted = text(&source[key], key)?;
                let object = self
                    .objects
                    .iter()
                    .find(|o| {
                        o["kind"] == kind
                            && o["metadata"]["name"] == wanted
                            && o["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
                    })
                    .with_context(|| format!("no {kind} {namespace}/{wanted} for volume {name}"))?;
                write_files(&dir, &object_files(object, &source["items"])?)?;
                dir
            } else if volume.get("emptyDir").is_some() {
                fs::create_dir_all(&dir)?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
                dir
            } else {
                bail!(
                    "volume {name}: only hostPath, downwardAPI, configMap, secret and emptyDir are supported here: {volume}"
                );
            };
            paths.insert(name.to_owned(), path);
        }
        Ok(paths)
    }

    /// Starts one container of `pod` in its cgroup and network namespace.
    fn start(
        &self,
        pod: &RunningPod,
        container: &Value,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<Container> {
        let name = text(&container["name"], "container name")?.to_owned();
        let reference = text(&container["image"], "image")?;
        let image = self.images.iter().find(|i| i.reference == reference);
        ensure!(
            image.is_some() || self.host_images.iter().any(|h| h == reference),
            "container {name}: image {reference} is not on the node (loaded: {:?})",
            self.images.iter().map(|i| &i.reference).collect::<Vec<_>>()
        );
        let root = image.map_or_else(|| PathBuf::from("/"), |i| i.rootfs.clone());

        let argv = command_line(container, image)?;
        ensure!(!argv.is_empty(), "container {name}: no command");
        let mut env: Vec<(String, String)> = image
            .into_iter()
            .flat_map(|i| i.config["Env"].as_array().into_iter().flatten())
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        // containerd's default for an image without one.
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        env.push(("HOSTNAME".into(), pod.name.clone()));
        for var in container["env"].as_array().into_iter().flatten() {
            let key = text(&var["name"], "env name")?.to_owned();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => v.clone(),
                (_, Value::String(path)) => field(&pod.spec, path)?,
                _ => bail!("container {name}: env {key}: only value and fieldRef are supported"),
            };
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let user = user(container, &pod.spec, image)?;

        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            ensure!(
                mount.get("subPath").is_none(),
                "container {name}: subPath is not supported here"
            );
            let volume = text(&mount["name"], "volumeMount name")?;
            let source = volumes
                .get(volume)
                .with_context(|| format!("container {name}: no volume {volume}"))?;
            let target = text(&mount["mountPath"], "mountPath")?;
            ensure!(
                target.starts_with('/') && !target.split('/').any(|c| c == ".."),
                "container {name}: mountPath {target}"
            );
            mounts.push((source.clone(), target.to_owned(), mount["readOnly"] == true));
        }
        ensure!(
            image.is_some() || mounts.is_empty(),
            "container {name}: volumes for a container from the node's root are not supported"
        );
        if image.is_some() {
            for dir in ["proc", "sys", "dev"]
                .into_iter()
                .chain(mounts.iter().map(|(_, t, _)| t.trim_start_matches('/')))
            {
                fs::create_dir_all(root.join(dir))?;
            }
        }

        let id = container_id(&pod.name, &name);
        let cgroup = Cgroup::create_in(
            pod.cgroup.as_ref().context("the pod is stopped")?.path(),
            &self.driver.container_dir(&id),
        )?;
        let script = container_script(&root, image.is_some(), &mounts, &env, &user, &argv);
        let proc = Launch::new(&format!("{}-{name}", pod.name), "nsenter")
            .args([
                format!("--net={}", pod.netns.display()),
                format!("--cgroup=/proc/{}/ns/cgroup", self.cgroupns.pid()),
            ])
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script, "trueip-kubelet"])
            .cgroup(&cgroup)
            .spawn(&self.scratch)?;
        Ok(Container {
            name,
            proc,
            cgroup: Some(cgroup),
        })
    }

    /// Probes until `probe` passes, within its `failureThreshold` × `periodSeconds` (after
    /// `initialDelaySeconds`); fails early if the container exits.
    fn await_probe(
        &self,
        container: &mut Container,
        spec: &Value,
        probe: &Value,
        ip: IpAddr,
    ) -> Result<()> {
        let seconds = |key: &str, default: u64| probe[key].as_u64().unwrap_or(default);
        let budget = Duration::from_secs(
            seconds("initialDelaySeconds", 0)
                + seconds("failureThreshold", 3) * seconds("periodSeconds", 10),
        );
        let deadline = Instant::now() + budget;
        loop {
            container.proc.ensure_running()?;
            if self.probe_once(spec, probe, ip)? {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not pass its probe within {budget:?}:\n{}",
                container.name,
                container.proc.log_tail()
            );
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// One try of `probe` of `container`, from the node's network: a TCP connect, or an HTTP(S)
    /// GET that must answer 200–399 (HTTPS unverified, as the kubelet does).
    fn probe_once(&self, container: &Value, probe: &Value, ip: IpAddr) -> Result<bool> {
        if let Some(tcp) = probe.get("tcpSocket") {
            let addr = SocketAddr::new(ip, probe_port(container, &tcp["port"])?);
            return self
                .network
                .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok());
        }
        let Some(http) = probe.get("httpGet") else {
            bail!("only tcpSocket and httpGet probes are supported here: {probe}");
        };
        let addr = SocketAddr::new(ip, probe_port(container, &http["port"])?);
        let scheme = http["scheme"]
            .as_str()
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        let path = http["path"].as_str().unwrap_or("/");
        let out = run::output(
            self.network
                .command("curl")
                .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["-A", "kube-probe/1.33", "--max-time"])
                .arg(PROBE_TIMEOUT.as_secs().to_string())
                .arg(format!("{scheme}://{addr}{path}")),
            PROBE_TIMEOUT * 5,
        )?;
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Ok((200..400).contains(&status))
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        while let Some(cgroup) = self.qos.pop() {
            drop(cgroup);
        }
        self.cgroupns.kill();
    }
}

/// A pod that runs; dropping it kills its containers (the last started first) and removes its
/// cgroups.
#[derive(Debug)]
pub struct RunningPod {
    /// `metadata.name`.
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
    /// The pod as it runs (`spec.nodeName` and `status.podIP` filled in).
    pub spec: Value,
    /// Its QoS class.
    pub qos: Qos,
    /// Its network namespace (what the CNI plugin made for its sandbox).
    netns: PathBuf,
    containers: Vec<Container>,
    cgroup: Option<Cgroup>,
}

impl RunningPod {
    /// A running container, by name.
    pub fn container(&mut self, name: &str) -> Result<&mut Proc> {
        self.containers
            .iter_mut()
            .find(|c| c.name == name)
            .map(|c| &mut c.proc)
            .with_context(|| format!("pod {}: no running container {name}", self.name))
    }

    /// The cgroup of container `name`, below [`Node::cgroup_root`].
    pub fn container_cgroup(&self, name: &str) -> Option<&Path> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.cgroup.as_ref())
            .map(Cgroup::path)
    }

    /// The logs of every container, for a failing test.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for c in &self.containers {
            let _ = write!(
                all,
                "--- {}/{}:\n{}\n",
                self.name,
                c.name,
                c.proc.log_tail()
            );
        }
        all
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        while let Some(mut container) = self.containers.pop() {
            container.proc.kill();
            drop(container.cgroup.take());
        }
        drop(self.cgroup.take());
    }
}

/// One started container: its process (the runtime's shim stands in as a process group) and
/// its cgroup.
#[derive(Debug)]
struct Container {
    name: String,
    proc: Proc,
    cgroup: Option<Cgroup>,
}

/// The value of a downward-API `fieldPath` of `pod`.
fn field(pod: &Value, path: &str) -> Result<String> {
    let meta = &pod["metadata"];
    let value = match path {
        "metadata.name" => &meta["name"],
        "metadata.namespace" => &meta["namespace"],
        "metadata.uid" => &meta["uid"],
        "spec.nodeName" => &pod["spec"]["nodeName"],
        "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
        "status.podIP" => &pod["status"]["podIP"],
        "metadata.annotations" | "metadata.labels" => {
            let map = &meta[&path["metadata.".len()..]];
            let mut lines = String::new();
            for (k, v) in map.as_object().into_iter().flatten() {
                let _ = writeln!(lines, "{k}={v}");
            }
            return Ok(lines);
        }
        _ => {
            let (map, key) = path
                .strip_prefix("metadata.annotations['")
                .map(|k| ("annotations", k))
                .or_else(|| {
                    path.strip_prefix("metadata.labels['")
                        .map(|k| ("labels", k))
                })
                .with_context(|| format!("fieldPath {path} is not supported here"))?;
            let key = key
                .strip_suffix("']")
                .with_context(|| format!("fieldPath {path}"))?;
            &meta[map][key]
        }
    };
    // An absent annotation or label is an empty file, as the kubelet writes it.
    Ok(value.as_str().unwrap_or_default().to_owned())
}

/// The files of a ConfigMap or Secret volume (all keys, or the `items` listed).
fn object_files(object: &Value, items: &Value) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut all = BTreeMap::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        let bytes = if object["kind"] == "Secret" {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("secret key {k}"))?
        } else {
            text.as_bytes().to_vec()
        };
        all.insert(k.clone(), bytes);
    }
    for (k, v) in object["stringData"].as_object().into_iter().flatten() {
        all.insert(
            k.clone(),
            v.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    let Some(items) = items.as_array() else {
        return Ok(all);
    };
    let mut chosen = BTreeMap::new();
    for item in items {
        let key = text(&item["key"], "items.key")?;
        let bytes = all.remove(key).with_context(|| format!("no key {key}"))?;
        chosen.insert(text(&item["path"], "items.path")?.to_owned(), bytes);
    }
    Ok(chosen)
}

/// Writes a volume's files (readable by any user, as the kubelet's default mode 0644).
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (name, bytes) in files {
        ensure!(
            !name.starts_with('/') && !name.split('/').any(|c| c == ".."),
            "file {name}"
        );
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// `command`/`args` over the image's `Entrypoint`/`Cmd`, as Kubernetes combines them.
fn command_line(container: &Value, image: Option<&Image>) -> Result<Vec<String>> {
    let list = |key: &str| -> Option<Vec<String>> {
        container[key].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
    };
    let (entrypoint, cmd) = image.map_or((Vec::new(), Vec::new()), |i| (i.entrypoint(), i.cmd()));
    Ok(match (list("command"), list("args")) {
        (Some(command), Some(args)) => [command, args].concat(),
        (Some(command), None) => command,
        (None, Some(args)) => [entrypoint, args].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    })
}

/// `uid:gid` the container runs as.
fn user(container: &Value, pod: &Value, image: Option<&Image>) -> Result<String> {
    let pick = |key: &str| {
        container["securityContext"][key]
            .as_u64()
            .or_else(|| pod["spec"]["securityContext"][key].as_u64())
    };
    let from_image = image.map(Image::user).unwrap_or_default();
    let (image_uid, image_gid) = from_image.split_once(':').unwrap_or((from_image, ""));
    let numeric = |s: &str| -> Result<Option<u64>> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .with_context(|| format!("image user {from_image:?} is not numeric"))
    };
    let uid = match pick("runAsUser") {
        Some(uid) => uid,
        None => numeric(image_uid)?.unwrap_or(0),
    };
    let gid = match pick("runAsGroup") {
        Some(gid) => gid,
        None => numeric(image_gid)?.unwrap_or(0),
    };
    if container["securityContext"]["runAsNonRoot"] == true {
        ensure!(uid != 0, "runAsNonRoot, but the container would run as 0");
    }
    Ok(format!("{uid}:{gid}"))
}

/// The port a probe names: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, port: &Value) -> Result<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).context("probe port");
    }
    let name = text(port, "probe port")?;
    let found = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .with_context(|| format!("no container port named {name}"))?;
    u16::try_from(found).context("container port")
}

/// The shell script that sets up the container's mounts in its own mount namespace and starts
/// its command with only its own environment, as `user`.
fn container_script(
    root: &Path,
    chrooted: bool,
    mounts: &[(PathBuf, String, bool)],
    env: &[(String, String)],
    user: &str,
    argv: &[String],
) -> String {
    let mut s = String::from("set -e\nchroot=$(command -v chroot)\n");
    let root_text = root.display().to_string();
    if chrooted {
        let _ = writeln!(
            s,
            "mount -t proc proc {}",
            quote(&format!("{root_text}/proc"))
        );
        for dir in ["sys", "dev"] {
            let _ = writeln!(
                s,
                "mount --rbind /{dir} {}",
                quote(&format!("{root_text}/{dir}"))
            );
        }
        for (source, target, read_only) in mounts {
            let target = quote(&format!("{root_text}{target}"));
            let _ = writeln!(
                s,
                "mount --rbind {} {target}",
                quote(&source.display().to_string())
            );
            if *read_only {
                let _ = writeln!(s, "mount -o remount,bind,ro {target}");
            }
        }
    }
    s.push_str("exec env -i --");
    for (k, v) in env {
        let _ = write!(s, " {}", quote(&format!("{k}={v}")));
    }
    let _ = write!(s, " \"$chroot\" --userspec={user} {}", quote(&root_text));
    for arg in argv {
        let _ = write!(s, " {}", quote(arg));
    }
    s.push('\n');
    s
}

/// `text` in single quotes for sh.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A 64-hex-digit container id, unique on the node.
fn container_id(pod: &str, container: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = format!(
        "{}-{}-{pod}-{container}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut h = crate::app::Fnv1a::new();
    h.update(seed.as_bytes());
    let a = h.finish();
    let mut h = crate::app::Fnv1a::new();
    h.update(&a.to_le_bytes());
    h.update(seed.as_bytes());
    let b = h.finish();
    format!("{a:016x}{b:016x}{a:016x}{b:016x}")
}

fn text<'v>(value: &'v Value, what: &str) -> Result<&'v str> {
    value
        .as_str()
        .with_context(|| format!("{what} is missing or not a string"))
}
