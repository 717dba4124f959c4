//! The deployment files, parsed and cross-checked against each other and the
//! binary: the Dockerfile, the compose demo, the Kubernetes example, the
//! systemd unit (also `systemd-analyze verify`) and the `cargo deb` metadata.
//! Docker cannot run here, so these checks are what stands between the files
//! and a typo: keys, image names, ports, the paths the binary expects, and
//! every config they carry compiled with the environment they set.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::process::mqbridge;
use common::prometheus::repo;
use mqbridge::config::{self, BrokerKind, LoadOptions, Plan};
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// Compiles config text with exactly the variables `env` (as the container sees them).
fn compile_with(text: &str, name: &str, env: &BTreeMap<String, String>) -> Plan {
    let vars = |k: &str| env.get(k).cloned();
    let opts = LoadOptions { vars: &vars };
    match config::load_str_with(text, name, &opts) {
        Ok((plan, _)) => plan,
        Err(e) => panic!("{name} does not compile with {env:?}:\n{e}"),
    }
}

/// The port of a `host:port` string.
fn port_of(s: &str) -> u16 {
    s.rsplit(':')
        .next()
        .and_then(|p| p.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no port in {s:?}"))
}

/// The first built-in listener port of broker `name`.
fn builtin_port(plan: &Plan, name: &str) -> u16 {
    match &plan.brokers[name].kind {
        BrokerKind::BuiltIn(b) => b.listeners[0].addr.port(),
        BrokerKind::Remote(_) => panic!("{name} is not built-in"),
    }
}

/// `(host, port)` of the first endpoint of remote broker `name`.
fn remote_endpoint(plan: &Plan, name: &str) -> (String, u16) {
    match &plan.brokers[name].kind {
        BrokerKind::Remote(r) => (r.endpoints[0].host.clone(), r.endpoints[0].port),
        BrokerKind::BuiltIn(_) => panic!("{name} is not remote"),
    }
}

// ---- Dockerfile -------------------------------------------------------------

/// Dockerfile instructions: (keyword, arguments), continuation lines joined,
/// comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("docker/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (k, v) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((k.to_uppercase(), v.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The `KEY=value` pairs of every `ENV` instruction.
fn dockerfile_env(ins: &[(String, String)]) -> BTreeMap<String, String> {
    ins.iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, v)| v.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_real_healthcheck() {
    let ins = dockerfile();
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].ends_with(" AS builder"), "{froms:?}");
    let runtime_start = ins
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("a final stage");
    let runtime = &ins[runtime_start..];

    // Built with the dist profile, which exists and strips the binary.
    let build = ins
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("cargo build"))
        .expect("a cargo build step");
    assert!(build.1.contains("--profile dist --locked"), "{}", build.1);
    assert!(build.1.contains("target/dist/mqbridge"), "{}", build.1);
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let dist = &cargo["profile"]["dist"];
    assert_eq!(dist["inherits"].as_str(), Some("release"));
    assert_eq!(dist["debug"].as_bool(), Some(false));
    assert_eq!(dist["strip"].as_bool(), Some(true));

    // The build context provides every path COPY takes from it.
    let ignore = read(".dockerignore");
    for (_, v) in ins.iter().filter(|(k, _)| k == "COPY") {
        if v.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = v.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src} missing");
            assert!(
                !ignore.lines().any(|l| l.trim_end_matches('/') == *src),
                "{src} is in .dockerignore"
            );
        }
    }
    assert!(
        runtime
            .iter()
            .any(|(k, v)| k == "COPY" && v.starts_with("--from=builder ")),
        "the runtime copies the binary from the builder"
    );

    // Non-root, numerically (Kubernetes' runAsNonRoot checks a number).
    let user = runtime
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, v)| v.clone())
        .expect("a USER in the final stage");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric uid");
    assert_ne!(uid, 0, "runs as root");

    // /data is a volume and the working directory.
    assert!(
        runtime
            .iter()
            .any(|(k, v)| k == "VOLUME" && v.contains("\"/data\""))
    );
    assert!(runtime.iter().any(|(k, v)| k == "WORKDIR" && v == "/data"));
    let user_setup = runtime
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("useradd"))
        .expect("user creation");
    assert!(
        user_setup
            .1
            .contains(&format!("install -d -o {uid} -g {uid}"))
            && user_setup.1.contains(" /data"),
        "/data must belong to the runtime user: {}",
        user_setup.1
    );

    // HEALTHCHECK runs a real subcommand of the binary.
    let hc = runtime
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, v)| v.clone())
        .expect("a HEALTHCHECK");
    let exec = hc.split_once("CMD ").expect("HEALTHCHECK CMD").1;
    let argv: Vec<String> = serde_json::from_str(exec).expect("exec form");
    assert_eq!(argv[..2], ["mqbridge", "health"], "{argv:?}");
    let help = mqbridge()
        .args(&argv[1..])
        .arg("--help")
        .output()
        .expect("run mqbridge");
    assert!(
        help.status.success(),
        "`{}` is not a subcommand: {}",
        argv.join(" "),
        String::from_utf8_lossy(&help.stderr)
    );

    // The shipped config with the image's environment: listeners on every
    // interface at the exposed ports, and `health` finds the metrics port.
    let env = dockerfile_env(&ins);
    let plan = compile_with(&read("bridges.yaml"), "bridges.yaml", &env);
    let exposed: Vec<u16> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, v)| v.split_whitespace().map(|p| p.parse().expect("port")))
        .collect();
    for broker in ["edge", "cloud"] {
        let BrokerKind::BuiltIn(b) = &plan.brokers[broker].kind else {
            panic!("{broker} is built-in in the shipped file");
        };
        assert!(b.listeners[0].addr.ip().is_unspecified(), "{broker}");
        assert!(exposed.contains(&b.listeners[0].addr.port()), "{broker}");
    }
    assert!(plan.metrics.listen.ip().is_unspecified());
    assert!(exposed.contains(&plan.metrics.listen.port()));
    assert_eq!(
        port_of(&env["MQBRIDGE_METRICS_LISTEN"]),
        plan.metrics.listen.port()
    );

    // ENTRYPOINT + CMD run the copied config.
    let cmd = runtime
        .iter()
        .find(|(k, _)| k == "CMD")
        .map(|(_, v)| v.clone())
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(&cmd).expect("exec form");
    assert_eq!(cmd, ["run", "--config", "/etc/mqbridge/bridges.yaml"]);
    assert!(
        runtime
            .iter()
            .any(|(k, v)| k == "COPY" && v == "bridges.yaml /etc/mqbridge/bridges.yaml")
    );
}

// ---- compose ----------------------------------------------------------------

/// `KEY: value` environment of a compose service.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment map")
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The bind mounts of a compose service: (host path relative to docker/, container path).
fn binds(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with('.'))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap_or_default().to_owned();
            let inside = parts.next().unwrap_or_default().to_owned();
            (host, inside)
        })
        .collect()
}

#[test]
fn compose_demo_wires_bridge_cloud_prometheus_and_grafana() {
    let compose = yaml("docker/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["cloud", "grafana", "mqbridge", "prometheus"]);
    let docker_dir = repo().join("docker");

    // Every bind-mounted file or directory exists.
    for (name, svc) in services {
        for (host, _) in binds(svc) {
            assert!(
                docker_dir.join(&host).exists(),
                "service {name} mounts {host}, which does not exist"
            );
        }
    }
    let image = |s: &str| services[s]["image"].as_str().expect("image").to_owned();
    assert!(image("cloud").starts_with("eclipse-mosquitto:"));
    assert!(image("prometheus").starts_with("prom/prometheus:v"));
    assert!(image("grafana").starts_with("grafana/grafana:"));

    // mqbridge: built from our Dockerfile, runs the mounted demo config.
    let mq = &services["mqbridge"];
    assert_eq!(image("mqbridge"), "mqbridge:latest");
    let context = docker_dir.join(mq["build"]["context"].as_str().expect("context"));
    let dockerfile = mq["build"]["dockerfile"].as_str().expect("dockerfile");
    assert!(context.join(dockerfile).exists(), "{dockerfile}");
    assert_eq!(
        context.canonicalize().expect("context"),
        repo().canonicalize().expect("repo")
    );
    let command: Vec<&str> = mq["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command, ["run", "--config", "/etc/mqbridge/bridges.yaml"]);
    let (config_host, _) = binds(mq)
        .into_iter()
        .find(|(_, inside)| inside == "/etc/mqbridge/bridges.yaml")
        .expect("the config is mounted");
    assert!(
        mq["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/data"))),
        "a volume for /data"
    );

    // The demo config with the service's environment: the edge listens on the
    // published port, the cloud is the `cloud` service at its listener port,
    // metrics on the published port Prometheus scrapes.
    let env = compose_env(mq);
    let text = std::fs::read_to_string(docker_dir.join(&config_host)).expect("demo config");
    let plan = compile_with(&text, "bridges.yaml", &env);
    let published: Vec<(u16, u16)> = mq["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(Value::as_str)
        .map(|p| {
            let (h, c) = p.split_once(':').expect("host:container");
            (h.parse().expect("port"), c.parse().expect("port"))
        })
        .collect();
    let edge = builtin_port(&plan, "edge");
    assert!(published.iter().any(|(_, c)| *c == edge), "edge port");
    assert!(
        published
            .iter()
            .any(|(_, c)| *c == plan.metrics.listen.port()),
        "metrics port"
    );
    let (cloud_host, cloud_port) = remote_endpoint(&plan, "cloud");
    assert_eq!(cloud_host, "cloud", "the endpoint is the compose service");
    let mosquitto_conf = binds(&services["cloud"])
        .into_iter()
        .find(|(_, inside)| inside == "/mosquitto/config/mosquitto.conf")
        .map(|(h, _)| std::fs::read_to_string(docker_dir.join(h)).expect("mosquitto.conf"))
        .expect("the cloud's config is mounted");
    assert!(
        mosquitto_conf
            .lines()
            .any(|l| l.trim() == format!("listener {cloud_port}")),
        "mosquitto listens on {cloud_port}"
    );

    // Prometheus reads the shipped files and scrapes mqbridge:<metrics port>.
    let prom = &services["prometheus"];
    let (prom_dir, prom_inside) = binds(prom)
        .into_iter()
        .next()
        .expect("prometheus mounts the shipped files");
    assert_eq!(prom_dir, "../deploy/prometheus");
    let args: Vec<&str> = prom["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    let rel = config_file
        .strip_prefix(&format!("{prom_inside}/"))
        .expect("the config is in the mounted dir");
    let prom_conf: Value =
        serde_saphyr::from_str(&read(&format!("deploy/prometheus/{rel}"))).expect("yaml");
    let target = prom_conf["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .expect("target");
    assert_eq!(target, format!("mqbridge:{}", plan.metrics.listen.port()));
    for rule_file in prom_conf["rule_files"].as_array().expect("rule_files") {
        let f = rule_file.as_str().expect("path");
        assert!(repo().join("deploy/prometheus").join(f).exists(), "{f}");
    }

    // Grafana: provisioning mounted where Grafana reads it, the data source is
    // the prometheus service, the dashboard lands in the provider's path.
    let graf = &services["grafana"];
    let gb = binds(graf);
    assert!(
        gb.iter().any(|(h, i)| h == "../deploy/grafana/provisioning"
            && i == "/etc/grafana/provisioning"),
        "{gb:?}"
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    assert!(
        prom["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with(":9090")))
    );
    let provider = yaml("deploy/grafana/provisioning/dashboards/mqbridge.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    assert!(
        gb.iter()
            .any(|(h, i)| h == "../deploy/grafana/mqbridge.json"
                && *i == format!("{path}/mqbridge.json")),
        "{gb:?}"
    );
    let dash: Value = serde_json::from_str(&read("deploy/grafana/mqbridge.json")).expect("json");
    assert_eq!(dash["uid"], "mqbridge");
    assert!(dash["panels"].as_array().expect("panels").len() >= 10);
}

// ---- Kubernetes ---------------------------------------------------------------

fn kube_objects() -> BTreeMap<String, Value> {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let mut out = BTreeMap::new();
    for r in kustomization["resources"].as_array().expect("resources") {
        let file = r.as_str().expect("resource path");
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&read(&format!("deploy/kubernetes/{file}")))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        for d in docs {
            let kind = d["kind"].as_str().expect("kind").to_owned();
            assert!(d["apiVersion"].is_string(), "{file}: apiVersion");
            assert!(out.insert(kind.clone(), d).is_none(), "two {kind}s");
        }
    }
    out
}

#[test]
fn kubernetes_statefulset_probes_config_service_and_monitor_fit_together() {
    let k = kube_objects();
    let kinds: Vec<&str> = k.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Service", "ServiceMonitor", "StatefulSet"]
    );
    let sts = &k["StatefulSet"];
    assert_eq!(sts["apiVersion"], "apps/v1");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    assert_eq!(spec["serviceName"], k["Service"]["metadata"]["name"]);

    // Non-root, as the image's user.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let ins = dockerfile();
    let image_user = ins
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, v)| v.split(':').next().unwrap_or_default().to_owned())
        .expect("USER");
    assert_eq!(pod["securityContext"]["runAsUser"].to_string(), image_user);

    let c = &pod["containers"][0];
    let compose = yaml("docker/compose.yaml");
    assert_eq!(c["image"], compose["services"]["mqbridge"]["image"]);
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_owned(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();

    // Probes: /healthz and /readyz on the metrics port.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = c[probe]["httpGet"]["port"].as_str().expect("named port");
        assert!(ports.contains_key(port), "{probe} port {port}");
    }

    // The ConfigMap's file, mounted where `--config` points, compiles with the
    // container's environment, and its listeners are the container ports.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let config_path = Path::new(args[2]);
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let config_mount = mounts
        .iter()
        .find(|m| {
            Path::new(m["mountPath"].as_str().unwrap_or_default())
                == config_path.parent().expect("dir")
        })
        .expect("the config directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .expect("the config volume");
    assert_eq!(
        volume["configMap"]["name"],
        k["ConfigMap"]["metadata"]["name"]
    );
    let file_name = config_path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file");
    let text = k["ConfigMap"]["data"][file_name]
        .as_str()
        .expect("the ConfigMap holds the config file");
    let env: BTreeMap<String, String> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                e["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    let plan = compile_with(text, file_name, &env);
    assert_eq!(
        u64::from(plan.metrics.listen.port()),
        ports["metrics"],
        "metrics.listen is the metrics port"
    );
    assert!(plan.metrics.listen.ip().is_unspecified());
    assert_eq!(u64::from(builtin_port(&plan, "edge")), ports["mqtt"]);

    // Each replica its own /data volume.
    let claim = &spec["volumeClaimTemplates"][0];
    let data = mounts
        .iter()
        .find(|m| m["mountPath"] == "/data")
        .expect("/data mounted");
    assert_eq!(data["name"], claim["metadata"]["name"]);

    // The Service selects the pods and targets named container ports; the
    // ServiceMonitor selects the Service and scrapes its metrics port.
    let svc = &k["Service"];
    for (key, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[key], v, "selector {key}");
    }
    let svc_ports = svc["spec"]["ports"].as_array().expect("ports");
    for p in svc_ports {
        let target = p["targetPort"].as_str().expect("named targetPort");
        assert!(ports.contains_key(target), "{target}");
    }
    let sm = &k["ServiceMonitor"];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    for (key, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][key], v,
            "ServiceMonitor selects {key}"
        );
    }
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["path"], "/metrics");
    assert!(svc_ports.iter().any(|p| p["name"] == ep["port"]));
}

// ---- systemd ----------------------------------------------------------------

/// `[Section] Key=value` entries, repeated keys kept in order.
fn unit_file(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=value");
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

#[test]
fn systemd_unit_is_hardened_reloads_with_sighup_and_verifies() {
    let text = read("deploy/systemd/mqbridge.service");
    let entries = unit_file(&text);
    let get = |section: &str, key: &str| -> &str {
        entries
            .iter()
            .rfind(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("[{section}] {key} missing"))
    };
    assert_eq!(get("Service", "DynamicUser"), "yes");
    assert_eq!(get("Service", "User"), "mqbridge");
    assert_eq!(get("Service", "StateDirectory"), "mqbridge");
    // The store must live in the state directory (ProtectSystem=strict
    // leaves /etc, next to the config, read-only).
    assert!(
        text.lines()
            .any(|l| l.trim() == "Environment=MQBRIDGE_DATA_DIR=/var/lib/mqbridge/store"),
        "the unit must put the store under its StateDirectory"
    );
    assert_eq!(get("Service", "WorkingDirectory"), "/var/lib/mqbridge");
    assert_eq!(get("Service", "ProtectSystem"), "strict");
    assert_eq!(get("Service", "NoNewPrivileges"), "yes");
    assert_eq!(get("Service", "Restart"), "on-failure");
    assert_eq!(get("Service", "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("Install", "WantedBy"), "multi-user.target");
    // It starts the binary the .deb installs, on the config file the .deb installs.
    let exec: Vec<&str> = get("Service", "ExecStart").split_whitespace().collect();
    assert_eq!(
        exec,
        [
            "/usr/bin/mqbridge",
            "run",
            "--config",
            "/etc/mqbridge/bridges.yaml"
        ]
    );
    let deb = deb_metadata();
    let dests: Vec<String> = deb_assets(&deb).into_iter().map(|(_, d)| d).collect();
    assert!(dests.iter().any(|d| d == "usr/bin/"), "{dests:?}");
    assert!(
        dests.iter().any(|d| d == "etc/mqbridge/bridges.yaml"),
        "{dests:?}"
    );
    // The stop timeout covers the default drain (shutdown_timeout 10 s).
    let stop: u64 = get("Service", "TimeoutStopSec").parse().expect("seconds");
    assert!(stop > 10);

    // `systemd-analyze verify` (where systemd is installed), with ExecStart
    // pointing at the binary under test: verify checks that it exists.
    let Some(analyze) =
        common::mosquitto::find_bin("systemd-analyze", std::env::var_os("PATH").as_deref())
    else {
        eprintln!(
            "NOTE: systemd-analyze is not installed, so `systemd-analyze verify` did not run; \
             only the parse checks above did (apt-get install systemd to run it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("mqbridge.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/mqbridge", env!("CARGO_BIN_EXE_mqbridge")),
    )
    .expect("write unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

// ---- cargo deb ----------------------------------------------------------------

fn deb_metadata() -> toml::Value {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    cargo["package"]["metadata"]["deb"].clone()
}

/// (source, destination) of every asset.
fn deb_assets(deb: &toml::Value) -> Vec<(String, String)> {
    deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("[source, dest, mode]");
            assert_eq!(a.len(), 3, "{a:?}");
            let mode = a[2].as_str().expect("mode");
            assert!(u32::from_str_radix(mode, 8).is_ok(), "mode {mode}");
            (
                a[0].as_str().expect("source").to_owned(),
                a[1].as_str().expect("dest").to_owned(),
            )
        })
        .collect()
}

#[test]
fn deb_metadata_lists_files_that_exist_and_the_systemd_unit() {
    let deb = deb_metadata();
    let assets = deb_assets(&deb);
    for (src, _) in &assets {
        if let Some(bin) = src.strip_prefix("target/release/") {
            // cargo-deb builds it (reading target/release/ as the profile's dir).
            assert_eq!(bin, "mqbridge", "the package's binary");
            continue;
        }
        assert!(repo().join(src).is_file(), "asset {src} missing");
    }
    // Every conffile is installed by an asset.
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().expect("path").trim_start_matches('/');
        assert!(assets.iter().any(|(_, d)| d == conf), "conffile {conf}");
    }
    // The systemd unit comes from deploy/systemd.
    let units = &deb["systemd-units"];
    let dir = units["unit-scripts"].as_str().expect("unit-scripts");
    assert!(repo().join(dir).join("mqbridge.service").is_file());
    assert_eq!(units["enable"].as_bool(), Some(true));
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    assert!(repo().join(scripts).is_dir());
    // No stray maintainer scripts without the token cargo-deb fills in.
    for s in ["preinst", "postinst", "prerm", "postrm"] {
        let p = repo().join(scripts).join(s);
        if p.exists() {
            assert!(
                std::fs::read_to_string(&p)
                    .expect("read")
                    .contains("#DEBHELPER#")
            );
        }
    }
}
