//! The webhook, called the way kube-apiserver's mutating-webhook dispatcher calls it
//! (shared/K8S-TOOLING.md, five steps):
//!
//! 1. render the chart and take its MutatingWebhookConfiguration and the injector's ConfigMap;
//! 2. start the webhook binary with that configuration and a throw-away CA and serving
//!    certificate (rcgen), and render the chart again with that CA as the `caBundle`;
//! 3. decide, from the configuration's `namespaceSelector`, `objectSelector` and `rules`, which
//!    requests the apiserver would send (a labelled namespace: yes; an unlabelled one: no);
//! 4. POST those as `admission.k8s.io/v1` AdmissionReviews over HTTPS, trusting only the
//!    `caBundle`, to the Service path the configuration names;
//! 5. apply the returned JSONPatch, validate the mutated pod with `kubernetes-validate
//!    --strict`, and check the sidecar, its volumes, its security context and idempotency.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use kube_core::{DynamicObject, admission::AdmissionReview};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use trueip_test_kit::kube::{Operation, admission_review};

use crate::support::{INJECTOR, NAMESPACE, Tools, documents, find, injector_config};

/// A running `trueip-injector`, stopped on drop.
#[derive(Debug)]
pub(crate) struct Webhook {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    _config: TempDir,
}

impl Webhook {
    /// Starts the binary with `config` (the rendered ConfigMap's file) and the certificate files,
    /// checking them every 100 ms; returns once it listens.
    pub(crate) fn start(config: &str, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(INJECTOR)
            .args(["--listen", "127.0.0.1:0", "--cert-reload-interval", "100ms"])
            .args(["--log-format", "json"])
            .arg("--config")
            .arg(&config_path)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .context("starting trueip-injector")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Forwarded, so that a failing test shows the webhook's log.
                eprintln!("[injector] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(remaining) else {
                let _ = child.kill();
                bail!(
                    "trueip-injector did not report listening (exit: {:?})",
                    child.wait()
                );
            };
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "listening" {
                break entry["fields"]["addr"]
                    .as_str()
                    .context("no addr in the listening line")?
                    .parse()?;
            }
        };
        Ok(Self {
            child,
            addr,
            _config: dir,
        })
    }

    /// One HTTPS request, trusting only `ca_pem`, for the server name `host`.
    pub(crate) fn request(
        &self,
        ca_pem: &[u8],
        host: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(ca?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let server_name = ServerName::try_from(host.to_owned())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let addr = self.addr;
        runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let stream = connector.connect(server_name, tcp).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes().to_vec();
            anyhow::Ok((status, body))
        })
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throw-away CA and a serving certificate it signed for `host`, as PEM.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestPki {
    fn new(host: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "trueip test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![host.to_owned()])?.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the pair the way a Secret volume update does: complete files, renamed in place.
    fn install(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let part = path.with_extension("part");
            std::fs::write(&part, text)?;
            std::fs::rename(&part, path)?;
        }
        Ok(())
    }
}

// === what the apiserver evaluates before calling a webhook ===

/// A `metav1.LabelSelector` against `labels`; an absent selector matches everything.
fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> anyhow::Result<bool> {
    if selector.is_null() {
        return Ok(true);
    }
    if let Some(required) = selector["matchLabels"].as_object()
        && required.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Ok(false);
    }
    for expr in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = expr["key"].as_str().context("expression key")?;
        let values: Vec<&Value> = expr["values"].as_array().into_iter().flatten().collect();
        let label = labels.get(key);
        let ok = match expr["operator"].as_str().context("operator")? {
            "In" => label.is_some_and(|l| values.contains(&l)),
            "NotIn" => label.is_none_or(|l| !values.contains(&l)),
            "Exists" => label.is_some(),
            "DoesNotExist" => label.is_none(),
            other => bail!("unknown selector operator {other}"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether one of `rules` covers a namespaced core/v1 request with `operation` on `resource`
/// (`pods`, or a subresource such as `pods/ephemeralcontainers`).
fn rules_match(rules: &Value, operation: &str, resource: &str) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|v| v == want || v == "*")
    };
    rules.as_array().into_iter().flatten().any(|rule| {
        has(&rule["operations"], operation)
            && has(&rule["apiGroups"], "")
            && has(&rule["apiVersions"], "v1")
            && has(&rule["resources"], resource)
            && (rule["scope"].is_null() || rule["scope"] == "*" || rule["scope"] == "Namespaced")
    })
}

/// Whether the apiserver would call `webhook` for `operation` on `resource` of `pod` in
/// `namespace`.
fn apiserver_calls(
    webhook: &Value,
    namespace: &Value,
    pod: &Value,
    operation: &str,
    resource: &str,
) -> anyhow::Result<bool> {
    let empty = Map::new();
    let labels = |o: &Value| {
        o["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    Ok(rules_match(&webhook["rules"], operation, resource)
        && selector_matches(&webhook["namespaceSelector"], &labels(namespace))?
        && selector_matches(&webhook["objectSelector"], &labels(pod))?)
}

fn namespace(name: &str, opted_in: bool) -> Value {
    let mut labels = json!({"kubernetes.io/metadata.name": name});
    if opted_in {
        labels["trueip.io/inject"] = json!("enabled");
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, annotations: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27",
                                 "ports": [{"containerPort": 80}]}]},
    })
}

/// Who creates and debugs the test pods: a cluster administrator (`kubectl`).
fn admin() -> Value {
    json!({"username": "kubernetes-admin", "groups": ["system:masters"]})
}

/// The chart installed with `flags`, as far as a pod's creation is concerned: the webhook binary
/// running with the rendered configuration and a throw-away certificate for the Service's name,
/// and the MutatingWebhookConfiguration rendered with that CA as the `caBundle` (steps 1 and 2).
struct Installed {
    webhook: Webhook,
    /// The one webhook of the rendered MutatingWebhookConfiguration.
    configured: Value,
    /// The injector's configuration file, as rendered.
    config: String,
    /// The rendered objects.
    docs: Vec<Value>,
    ca_bundle: Vec<u8>,
    /// The Service's DNS name, which the certificate is for.
    host: String,
    /// The request path, with the timeout the apiserver adds.
    path: String,
    _certificates: TempDir,
}

/// What came back for one pod.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    message: String,
    warnings: Vec<String>,
    /// The pod after the patch (unchanged without one).
    pod: Value,
    patched: bool,
}

impl Installed {
    fn new(tools: &Tools, flags: &[&str]) -> anyhow::Result<Self> {
        // 1. The chart as installed, with its generated certificate.
        let docs = documents(&tools.render(&[], flags)?)?;
        let generated = find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0].clone();
        let config = injector_config(&docs)?;
        let service = &generated["clientConfig"]["service"];
        let host = format!(
            "{}.{}.svc",
            service["name"].as_str().context("service name")?,
            service["namespace"].as_str().context("service namespace")?
        );
        ensure!(service["namespace"] == NAMESPACE, "{service}");

        // 2. The webhook with a throw-away certificate for the Service's name, and the chart
        //    rendered again with that CA.
        let pki = TestPki::new(&host)?;
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        pki.install(&cert, &key)?;
        let webhook = Webhook::start(&config, &cert, &key)?;
        let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
        let ca_flag = format!("--set=injector.tls.caBundle={ca_b64}");
        let mut with_ca = flags.to_vec();
        with_ca.extend([
            "--set=injector.tls.source=secret",
            "--set=injector.tls.secretName=trueip-injector-tls",
            &ca_flag,
        ]);
        let docs = documents(&tools.render(&[], &with_ca)?)?;
        let configured = find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0].clone();
        let ca_bundle = base64::engine::general_purpose::STANDARD.decode(
            configured["clientConfig"]["caBundle"]
                .as_str()
                .context("caBundle")?,
        )?;
        ensure!(ca_bundle == pki.ca_pem.as_bytes());
        let strip = |mut w: Value| {
            if let Some(c) = w["clientConfig"].as_object_mut() {
                c.remove("caBundle");
            }
            w
        };
        ensure!(
            strip(configured.clone()) == strip(generated),
            "only the caBundle differs between the certificate sources"
        );
        ensure!(injector_config(&docs)? == config);
        let path = format!(
            "{}?timeout={}s",
            configured["clientConfig"]["service"]["path"]
                .as_str()
                .context("path")?,
            configured["timeoutSeconds"]
        );
        Ok(Self {
            webhook,
            configured,
            config,
            docs,
            ca_bundle,
            host,
            path,
            _certificates: dir,
        })
    }

    /// 4. and 5.: the apiserver's side of one pod creation.
    fn admit(&self, object: &Value) -> anyhow::Result<Answer> {
        self.call(object, Operation::Create)
    }

    /// Sends `object`, reads the response, applies the patch.
    fn call(&self, object: &Value, call: Operation) -> anyhow::Result<Answer> {
        let uid = format!("uid-{}", object["metadata"]["name"].as_str().unwrap_or("x"));
        let (status, body) = self.webhook.request(
            &self.ca_bundle,
            &self.host,
            Method::POST,
            &self.path,
            serde_json::to_vec(&admission_review(&uid, object, call, &admin()))?,
        )?;
        ensure!(
            status == StatusCode::OK,
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body)?;
        ensure!(review.types.api_version == "admission.k8s.io/v1");
        ensure!(review.types.kind == "AdmissionReview");
        let response = review.response.context("no response")?;
        ensure!(response.uid == uid, "uid {} != {uid}", response.uid);
        let mut pod = object.clone();
        let patched = response.patch.is_some();
        if let Some(patch) = &response.patch {
            let raw: Value = serde_json::from_slice(&body)?;
            ensure!(raw["response"]["patchType"] == "JSONPatch", "{raw}");
            let patch: json_patch::Patch = serde_json::from_slice(patch)?;
            json_patch::patch(&mut pod, &patch).context("the JSONPatch does not apply")?;
        }
        Ok(Answer {
            allowed: response.allowed,
            message: response.result.message,
            warnings: response.warnings.unwrap_or_default(),
            pod,
            patched,
        })
    }

    /// A GET over the same TLS.
    fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        self.webhook
            .request(&self.ca_bundle, &self.host, Method::GET, path, vec![])
    }
}

/// The sidecar in a mutated pod.
fn sidecar(pod: &Value) -> anyhow::Result<&Value> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "trueip-sidecar")
        .context("no trueip-sidecar init container")
}

fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
}

pub(crate) fn apiserver_calls_the_webhook_and_applies_its_patch() -> anyhow::Result<()> {
    let tools = Tools::require()?;

    // 1. and 2.
    let installed = Installed::new(&tools, &[])?;
    let configured = &installed.configured;

    // 3. Which requests the apiserver sends.
    let shop = namespace("shop", true);
    let plain = pod("web-0", &json!({"trueip.io/ports": "8080:80"}));
    assert!(apiserver_calls(
        configured, &shop, &plain, "CREATE", "pods"
    )?);
    assert!(!apiserver_calls(
        configured, &shop, &plain, "UPDATE", "pods"
    )?);
    assert!(!apiserver_calls(
        configured,
        &namespace("other", false),
        &plain,
        "CREATE",
        "pods"
    )?);
    assert!(!apiserver_calls(
        configured,
        &namespace("kube-system", true),
        &plain,
        "CREATE",
        "pods"
    )?);
    assert!(!apiserver_calls(
        configured,
        &namespace(NAMESPACE, true),
        &plain,
        "CREATE",
        "pods"
    )?);
    // Opted out by label: sent all the same (the webhook still checks what it mounts).
    let mut labelled_out = plain.clone();
    labelled_out["metadata"]["labels"] = json!({"trueip.io/inject": "disabled"});
    assert!(apiserver_calls(
        configured,
        &shop,
        &labelled_out,
        "CREATE",
        "pods"
    )?);
    // Debug containers joining a running pod are sent; other updates are not.
    assert!(apiserver_calls(
        configured,
        &shop,
        &plain,
        "UPDATE",
        "pods/ephemeralcontainers"
    )?);
    assert!(!apiserver_calls(
        configured,
        &shop,
        &plain,
        "UPDATE",
        "pods/status"
    )?);

    // 4. and 5. The calls.
    let apiserver = &installed;

    // A pod without init containers or volumes, on the chart's default mode (ebpf).
    let web = pod(
        "web-0",
        &json!({"trueip.io/ports": "8080:80", "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    );
    let answer = apiserver.admit(&web)?;
    assert!(answer.allowed && answer.patched, "{answer:?}");
    let mutated = answer.pod;
    tools.validate(&serde_json::to_string(&mutated)?, "mutated web pod")?;
    let container = sidecar(&mutated)?;
    assert_eq!(container["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(container["image"], "ghcr.io/trueip/trueip-sidecar:0.1.0");
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"]}),
        "no CAP_BPF, nothing added"
    );
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        container["resources"],
        json!({"limits": {"memory": "64Mi"}, "requests": {"cpu": "10m", "memory": "16Mi"}})
    );
    let env: Vec<&Value> = container["env"].as_array().context("env")?.iter().collect();
    for (name, field) in [
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE_NAME", "metadata.namespace"),
        ("K8S_POD_UID", "metadata.uid"),
    ] {
        assert!(
            env.iter()
                .any(|e| e["name"] == name && e["valueFrom"]["fieldRef"]["fieldPath"] == field),
            "{name} from {field}: {env:?}"
        );
    }
    let socket = volume(&mutated, "trueip-agent-socket").context("no agent socket volume")?;
    assert_eq!(socket["hostPath"]["path"], "/run/trueip");
    let mounts = container["volumeMounts"].as_array().context("mounts")?;
    let socket_mount = mounts
        .iter()
        .find(|m| m["name"] == "trueip-agent-socket")
        .context("socket not mounted")?;
    assert_eq!(socket_mount["mountPath"], "/run/trueip");
    assert_eq!(socket_mount["readOnly"], true);
    let config_volume = volume(&mutated, "trueip-sidecar-config").context("no config volume")?;
    assert_eq!(
        config_volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['trueip.io/sidecar-config']"
    );
    // The file the sidecar will read, read by the sidecar's own parser.
    let file = mutated["metadata"]["annotations"]["trueip.io/sidecar-config"]
        .as_str()
        .context("no sidecar-config annotation")?;
    let sidecar_config = trueip_sidecar_config::Config::from_yaml(file)?;
    let listener = &sidecar_config.listeners[0];
    assert_eq!(listener.listen, "0.0.0.0:8080".parse()?);
    assert_eq!(listener.upstream, "127.0.0.1:80".parse()?);
    assert_eq!(listener.mode, trueip_sidecar_config::Mode::Ebpf);
    assert!(listener.is_trusted("10.1.2.3".parse()?));
    assert_eq!(
        sidecar_config.agent_socket,
        Path::new("/run/trueip/agent.sock")
    );
    assert_eq!(mutated["spec"]["containers"], web["spec"]["containers"]);

    // Idempotent: the mutated pod, admitted again, comes back unchanged.
    let again = apiserver.admit(&mutated)?;
    assert!(again.allowed && !again.patched, "{again:?}");
    assert_eq!(again.pod, mutated);

    // A pod that already has init containers, volumes and annotations: appended to.
    let mut busy = pod(
        "busy-0",
        &json!({"team": "shop", "trueip.io/ports": "9090:90, 8443:443",
                "trueip.io/mode": "proxy-v1", "trueip.io/header": "optional",
                "trueip.io/trusted-cidrs": "192.0.2.0/24,2001:db8::/32"}),
    );
    busy["spec"]["initContainers"] = json!([{"name": "migrate", "image": "busybox:1.36"}]);
    busy["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    busy["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let answer = apiserver.admit(&busy)?;
    assert!(answer.allowed && answer.patched, "{answer:?}");
    tools.validate(&serde_json::to_string(&answer.pod)?, "mutated busy pod")?;
    let inits: Vec<&Value> = answer.pod["spec"]["initContainers"]
        .as_array()
        .context("inits")?
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(inits, [&json!("migrate"), &json!("trueip-sidecar")]);
    let volumes: Vec<&Value> = answer.pod["spec"]["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(
        volumes,
        [&json!("data"), &json!("trueip-sidecar-config")],
        "proxy-v1 needs no agent socket"
    );
    assert_eq!(answer.pod["metadata"]["annotations"]["team"], "shop");
    let ports: Vec<&Value> = sidecar(&answer.pod)?["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(
        ports,
        [&json!(9090), &json!(8443), &json!(9902)],
        "listeners, then metrics"
    );

    // Opted out, by label or annotation: left alone.
    let answer = apiserver.admit(&labelled_out)?;
    assert!(answer.allowed && !answer.patched, "{answer:?}");
    assert_eq!(answer.pod, labelled_out);
    let out = pod(
        "legacy-0",
        &json!({"trueip.io/inject": "disabled", "trueip.io/ports": "8080"}),
    );
    assert!(apiserver_calls(configured, &shop, &out, "CREATE", "pods")?);
    let answer = apiserver.admit(&out)?;
    assert!(answer.allowed && !answer.patched, "{answer:?}");
    assert_eq!(answer.pod, out);

    // Bad annotations: refused, each named.
    let answer = apiserver.admit(&pod(
        "bad-0",
        &json!({"trueip.io/ports": "http", "trueip.io/mode": "fast",
                "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    ))?;
    assert!(!answer.allowed && !answer.patched, "{answer:?}");
    assert!(
        answer
            .message
            .contains("annotation trueip.io/ports: \"http\": `http` is not a port"),
        "{}",
        answer.message
    );
    assert!(
        answer
            .message
            .contains("annotation trueip.io/mode: \"fast\": unknown variant `fast`"),
        "{}",
        answer.message
    );

    // The chart trusts no load balancer by default: a pod that names none is refused, saying so.
    let answer = apiserver.admit(&pod("untrusting-0", &json!({"trueip.io/ports": "8080:80"})))?;
    assert!(!answer.allowed, "{answer:?}");
    assert!(
        answer.message.contains("trueip.io/trusted-cidrs"),
        "{}",
        answer.message
    );

    // No ports anywhere: admitted unchanged, with a warning kubectl shows.
    let answer = apiserver.admit(&pod("batch-0", &json!({})))?;
    assert!(answer.allowed && !answer.patched, "{answer:?}");
    assert!(
        answer
            .warnings
            .iter()
            .any(|w| w.contains("trueip.io/ports")),
        "{answer:?}"
    );

    // Probes and metrics, over the same TLS.
    let (status, body) = installed.get("/healthz")?;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"ok\n".as_slice())
    );
    let (status, body) = installed.get("/metrics")?;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(body)?;
    assert!(
        metrics.contains("trueip_injector_admissions_total{outcome=\"injected\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trueip_injector_admissions_total{outcome=\"refused\"} 2\n"),
        "{metrics}"
    );
    let (status, _) = installed.webhook.request(
        &installed.ca_bundle,
        &installed.host,
        Method::POST,
        "/mutate",
        b"{}".to_vec(),
    )?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

pub(crate) fn tls_trusts_only_the_ca_bundle_and_follows_certificate_renewal() -> anyhow::Result<()>
{
    let tools = Tools::require()?;
    let docs = documents(&tools.render(&[], &[])?)?;
    let host = "trueip-injector.trueip.svc";
    let first = TestPki::new(host)?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    first.install(&cert, &key)?;
    let webhook = Webhook::start(&injector_config(&docs)?, &cert, &key)?;
    let healthz = |ca: &str, name: &str| {
        webhook
            .request(ca.as_bytes(), name, Method::GET, "/healthz", vec![])
            .map(|(status, _)| status)
    };
    assert_eq!(healthz(&first.ca_pem, host)?, StatusCode::OK);
    let stranger = TestPki::new(host)?;
    assert!(
        healthz(&stranger.ca_pem, host).is_err(),
        "a foreign CA is trusted"
    );
    assert!(
        healthz(&first.ca_pem, "trueip-injector.other.svc").is_err(),
        "the certificate is accepted for another name"
    );

    // A renewed certificate (another CA, as after a chart re-install) is served without a
    // restart; a broken pair in between is not.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )?;
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        healthz(&first.ca_pem, host)?,
        StatusCode::OK,
        "kept the working pair"
    );
    let second = TestPki::new(host)?;
    second.install(&cert, &key)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz(&second.ca_pem, host).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        healthz(&first.ca_pem, host).is_err(),
        "still serving the old certificate"
    );
    let (_, body) = webhook.request(
        second.ca_pem.as_bytes(),
        host,
        Method::GET,
        "/metrics",
        vec![],
    )?;
    let metrics = String::from_utf8(body)?;
    assert!(
        metrics.contains("trueip_injector_cert_reloads_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trueip_injector_cert_reload_errors_total "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("trueip_injector_cert_reload_errors_total 0\n"),
        "{metrics}"
    );
    Ok(())
}

/// A pod with `annotations` whose app container mounts the node's `path`.
fn grabbing(name: &str, path: &str, annotations: &Value) -> Value {
    let mut attacker = pod(name, annotations);
    attacker["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "node", "mountPath": "/node"}]);
    attacker["spec"]["volumes"] = json!([{"name": "node", "hostPath": {"path": path}}]);
    attacker
}

/// What every socket refusal ends with.
const ONLY_THE_SIDECAR: &str = "only the trueip sidecar this webhook injects may mount the node \
                                agent's socket directory /run/trueip";

pub(crate) fn tenants_get_no_privilege_by_annotation_or_volume() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let installed = Installed::new(&tools, &[])?;
    let shop = namespace("shop", true);
    let ebpf = json!({"trueip.io/ports": "8080:80", "trueip.io/trusted-cidrs": "10.0.0.0/8"});

    // The app container mounts the agent's socket directory, however spelled: refused, naming
    // the container, the volume and the path.
    for (i, path) in [
        "/run/trueip",
        "/run/trueip/",
        "/run",
        "/",
        "/var/run/trueip",
        "/run/trueip/agent.sock",
        "/srv/../run/trueip",
    ]
    .into_iter()
    .enumerate()
    {
        let attacker = grabbing(&format!("grab-{i}"), path, &ebpf);
        ensure!(apiserver_calls(
            &installed.configured,
            &shop,
            &attacker,
            "CREATE",
            "pods"
        )?);
        let answer = installed.admit(&attacker)?;
        ensure!(!answer.allowed && !answer.patched, "{path}: {answer:?}");
        let expected = if path.contains("..") {
            format!("(hostPath {path:?}, which the webhook cannot check")
        } else {
            format!("(hostPath {path}, ")
        };
        ensure!(
            answer.message.starts_with(&format!(
                "trueip: container \"app\" mounts volume \"node\" {expected}"
            )),
            "{path}: {}",
            answer.message
        );
        ensure!(
            answer.message.contains(ONLY_THE_SIDECAR),
            "{path}: {}",
            answer.message
        );
    }

    // By trueip's own volume name, left for the webhook's volume to fill in: refused.
    let mut by_name = pod("by-name-0", &ebpf);
    by_name["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "trueip-agent-socket", "mountPath": "/run/trueip"}]);
    let answer = installed.admit(&by_name)?;
    ensure!(!answer.allowed, "{answer:?}");
    ensure!(
        answer
            .message
            .starts_with("trueip: container \"app\" mounts volume \"trueip-agent-socket\""),
        "{}",
        answer.message
    );

    // Not being injected changes nothing: opted out by label or annotation, or without ports.
    let mut by_label = grabbing("label-0", "/run", &json!({}));
    by_label["metadata"]["labels"] = json!({"trueip.io/inject": "disabled"});
    for attacker in [
        by_label,
        grabbing(
            "annotation-0",
            "/run",
            &json!({"trueip.io/inject": "disabled"}),
        ),
        grabbing("portless-0", "/run", &json!({})),
        grabbing(
            "none-0",
            "/run",
            &json!({"trueip.io/ports": "8080", "trueip.io/mode": "none",
                                            "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
        ),
    ] {
        ensure!(apiserver_calls(
            &installed.configured,
            &shop,
            &attacker,
            "CREATE",
            "pods"
        )?);
        let answer = installed.admit(&attacker)?;
        ensure!(
            !answer.allowed && answer.message.contains(ONLY_THE_SIDECAR),
            "{}: {answer:?}",
            attacker["metadata"]["name"]
        );
    }

    // Declared but mounted by nobody: refused, saying why.
    let mut declared = grabbing("declared-0", "/run/trueip", &ebpf);
    declared["spec"]["containers"][0]
        .as_object_mut()
        .context("container")?
        .remove("volumeMounts");
    let answer = installed.admit(&declared)?;
    ensure!(!answer.allowed, "{answer:?}");
    ensure!(
        answer.message.starts_with(
            "trueip: the pod declares volume \"node\" (hostPath /run/trueip, the agent's socket \
             directory), which is refused even unmounted"
        ),
        "{}",
        answer.message
    );

    // The legitimate ebpf pod is injected; its sidecar runs with the socket's group.
    let web = pod("web-0", &ebpf);
    let answer = installed.admit(&web)?;
    ensure!(answer.allowed && answer.patched, "{answer:?}");
    let mutated = answer.pod;
    let agent = find(&installed.docs, "DaemonSet", Some("trueip-agent"))?;
    let agent_env = |name: &str| {
        agent["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    let group = sidecar(&mutated)?["securityContext"]["runAsGroup"].to_string();
    ensure!(
        agent_env("TRUEIP_SOCKET_GROUP") == Some(group.clone()),
        "the agent's socket group {:?} is not the sidecar's group {group}",
        agent_env("TRUEIP_SOCKET_GROUP")
    );
    ensure!(agent_env("TRUEIP_SOCKET_MODE").as_deref() == Some("660"));
    // ... and admitted again unchanged (a copied spec), its sidecar keeping the socket.
    let again = installed.admit(&mutated)?;
    ensure!(again.allowed && !again.patched, "{again:?}");
    // ... unless the copy hands the socket to the app too.
    let mut copied = mutated.clone();
    copied["metadata"]["name"] = json!("web-copy-0");
    copied["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "trueip-agent-socket", "mountPath": "/s", "readOnly": true}]);
    let answer = installed.admit(&copied)?;
    ensure!(
        !answer.allowed && answer.message.contains("container \"app\" mounts volume"),
        "{answer:?}"
    );

    // Debug containers joining the running pod: admitted without the socket, refused with it.
    ensure!(apiserver_calls(
        &installed.configured,
        &shop,
        &mutated,
        "UPDATE",
        "pods/ephemeralcontainers"
    )?);
    let mut debugged = mutated;
    debugged["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger-1", "image": "busybox:1.36", "stdin": true, "tty": true}]);
    let answer = installed.call(&debugged, Operation::AddEphemeralContainers)?;
    ensure!(answer.allowed && !answer.patched, "{answer:?}");
    debugged["spec"]["ephemeralContainers"][0]["volumeMounts"] =
        json!([{"name": "trueip-agent-socket", "mountPath": "/s"}]);
    let answer = installed.call(&debugged, Operation::AddEphemeralContainers)?;
    ensure!(!answer.allowed && !answer.patched, "{answer:?}");
    ensure!(
        answer
            .message
            .starts_with("trueip: container \"debugger-1\" mounts volume \"trueip-agent-socket\""),
        "{}",
        answer.message
    );

    // Root and CAP_NET_ADMIN by annotation: refused, naming the setting that allows it.
    let transparent = pod(
        "transparent-0",
        &json!({"trueip.io/ports": "8080:80", "trueip.io/mode": "transparent",
                "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    );
    let answer = installed.admit(&transparent)?;
    ensure!(!answer.allowed && !answer.patched, "{answer:?}");
    ensure!(
        answer.message.starts_with(
            "trueip: annotation trueip.io/mode: the transparent mode is not allowed in this \
             cluster (it runs the sidecar as root with CAP_NET_ADMIN): the chart value \
             injector.allowedModes allows none, proxy-v1, proxy-v2, ebpf, http"
        ),
        "{}",
        answer.message
    );
    Ok(())
}

pub(crate) fn transparent_is_injected_once_the_operator_allows_it() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let installed = Installed::new(
        &tools,
        &["--set=injector.allowedModes={none,proxy-v1,proxy-v2,ebpf,transparent,http}"],
    )?;
    ensure!(
        installed.config.contains(
            r#"allowedModes: ["none","proxy-v1","proxy-v2","ebpf","transparent","http"]"#
        ),
        "{}",
        installed.config
    );
    let transparent = pod(
        "transparent-0",
        &json!({"trueip.io/ports": "8080:80", "trueip.io/mode": "transparent",
                "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    );
    let answer = installed.admit(&transparent)?;
    ensure!(answer.allowed && answer.patched, "{answer:?}");
    tools.validate(
        &serde_json::to_string(&answer.pod)?,
        "mutated transparent pod",
    )?;
    let sc = &sidecar(&answer.pod)?["securityContext"];
    ensure!(sc["runAsUser"] == 0 && sc["runAsNonRoot"] == false, "{sc}");
    ensure!(
        sc["capabilities"] == json!({"add": ["NET_ADMIN"], "drop": ["ALL"]}),
        "{sc}"
    );
    ensure!(
        volume(&answer.pod, "trueip-agent-socket").is_none(),
        "transparent needs no agent socket"
    );
    Ok(())
}

pub(crate) fn http_pods_get_the_charts_http_section() -> anyhow::Result<()> {
    use trueip_sidecar_config::{ClientHeaders, HttpLimits, Mode};

    let tools = Tools::require()?;
    let installed = Installed::new(
        &tools,
        &[
            "--set=sidecar.http.client_headers=append",
            "--set=sidecar.http.x_real_ip=false",
            "--set=sidecar.http.tlv_headers.unique_id=x-request-id",
            "--set=sidecar.http.strip_headers={x-internal-user}",
            "--set=sidecar.http.limits.max_request_head=1048576",
            "--set=sidecar.http.limits.header_read_timeout=3s",
            "--set=sidecar.allowLoopbackClients=true",
            "--set=sidecar.admin.maxConnections=32",
        ],
    )?;
    let file = |pod: &Value| -> anyhow::Result<trueip_sidecar_config::Config> {
        let text = pod["metadata"]["annotations"]["trueip.io/sidecar-config"]
            .as_str()
            .context("no sidecar-config annotation")?;
        Ok(trueip_sidecar_config::Config::from_yaml(text)?)
    };

    // An http pod: every listener gets the chart's section, read by the sidecar's own parser.
    let web = pod(
        "http-0",
        &json!({"trueip.io/ports": "8080:80,8443:443", "trueip.io/mode": "http",
                "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    );
    let answer = installed.admit(&web)?;
    ensure!(answer.allowed && answer.patched, "{answer:?}");
    tools.validate(&serde_json::to_string(&answer.pod)?, "mutated http pod")?;
    let config = file(&answer.pod)?;
    ensure!(config.listeners.len() == 2);
    for l in &config.listeners {
        ensure!(l.mode == Mode::Http);
        let http = &l.http;
        ensure!(
            http.limits.max_request_head == 1_048_576,
            "{:?}",
            http.limits
        );
        ensure!(http.limits.header_read_timeout == Duration::from_secs(3));
        ensure!(http.limits.max_headers == HttpLimits::default().max_headers);
        ensure!(http.client_headers == ClientHeaders::Append);
        ensure!(http.x_real_ip.0.is_none());
        ensure!(
            http.x_forwarded_for
                .0
                .as_ref()
                .map(hyper::header::HeaderName::as_str)
                == Some("x-forwarded-for")
        );
        ensure!(http.strip_headers == ["x-internal-user"]);
        ensure!(
            http.tlv_headers
                .names()
                .map(hyper::header::HeaderName::as_str)
                .eq(["x-request-id"])
        );
        ensure!(l.allow_loopback_clients);
    }
    ensure!(config.admin.max_connections.get() == 32);
    ensure!(config.admin.header_timeout == Duration::from_secs(5));

    // A pod in another mode: no http section, the rest the same.
    let plain = pod(
        "plain-0",
        &json!({"trueip.io/ports": "8080:80", "trueip.io/mode": "proxy-v2",
                "trueip.io/trusted-cidrs": "10.0.0.0/8"}),
    );
    let answer = installed.admit(&plain)?;
    ensure!(answer.allowed && answer.patched, "{answer:?}");
    let text = answer.pod["metadata"]["annotations"]["trueip.io/sidecar-config"]
        .as_str()
        .context("no sidecar-config annotation")?;
    ensure!(
        !text.contains("http:") && !text.contains("max_request_head"),
        "{text}"
    );
    let config = file(&answer.pod)?;
    ensure!(config.listeners[0].http.limits == HttpLimits::default());
    ensure!(config.listeners[0].allow_loopback_clients);
    ensure!(config.admin.max_connections.get() == 32);
    Ok(())
}
