//! The files under `deploy/` agree with the code: every YAML and JSON file parses; the
//! Dockerfile, the compose file, the load balancer, Prometheus and the Kubernetes
//! manifests use the port the nodes listen on; the probes hit `/readyz` and `/healthz`,
//! which the router serves; every `HARVEST_*` variable they set is a setting the
//! configuration knows, with a value it accepts; termination periods cover the
//! shutdown sequence; and every series the Grafana dashboard queries is exported by a
//! running server's `/metrics`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use harvest_server::config::{self, Flags, Settings};
use harvest_testkit::{WsClient, spawn_app};
use serde_json::{Value, json};
use serde_norway::Value as Yaml;

/// The port every node listens on inside its container.
const PORT: u16 = 8080;
/// What the server spends after the grace period: hold records and room events are
/// flushed to SQL for at most one second each (`app::serve`).
const FLUSH_S: f64 = 2.0;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML file, with `<<` merge keys applied.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = <Yaml as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} holds one document");
    docs.remove(0)
}

/// A YAML scalar as a string (numbers and booleans too).
fn text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `15s`, `1m30s`, `500ms`, `1h` as seconds; a bare number counts in `bare_unit_s`.
fn duration_s(raw: &str, bare_unit_s: f64) -> f64 {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<f64>() {
        return n * bare_unit_s;
    }
    let mut total = 0.0;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or_else(|| panic!("duration {raw:?} lacks a unit"));
        let n: f64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {raw:?}"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" => 1e-6,
            unit => panic!("unknown unit {unit:?} in {raw:?}"),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    total
}

/// Checks that every `HARVEST_*` variable is a setting, resolves them as a node would,
/// and returns the settings.
#[track_caller]
fn resolve(origin: &str, env: &BTreeMap<String, String>) -> Settings {
    let known: BTreeSet<String> = config::keys().map(config::env_var).collect();
    for var in env.keys().filter(|v| v.starts_with("HARVEST_")) {
        assert!(
            known.contains(var),
            "{origin} sets {var}, which is not a setting (known: {known:?})"
        );
    }
    let env: HashMap<String, String> = env.clone().into_iter().collect();
    let settings = Settings::resolve(&env, &Flags::default())
        .unwrap_or_else(|e| panic!("{origin}: the settings do not resolve: {e}"));
    let addr = settings.listen_addr().unwrap();
    assert_eq!(addr.port(), PORT, "{origin}: listen port");
    assert!(
        addr.ip().is_unspecified(),
        "{origin}: a container must listen on every address, not {addr}"
    );
    settings
}

/// The longest a node takes from SIGTERM to exit with these settings.
fn shutdown_s(settings: &Settings) -> f64 {
    settings.shutdown_delay_ms as f64 / 1000.0 + settings.shutdown_grace_s as f64 + FLUSH_S
}

/// Replaces compose's `${NAME:-default}` and `${NAME-default}` with the default; a
/// variable without a default would make `docker compose up` depend on the caller.
fn interpolate(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {raw:?}"))
            + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("{raw:?}: ${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_deploy_file_parses() {
    let mut files = Vec::new();
    files_under(&deploy_dir(), &mut files);
    let mut parsed = 0;
    for path in &files {
        let rel = path.strip_prefix(deploy_dir()).unwrap().to_str().unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                assert!(!yaml_docs(rel).is_empty(), "{rel} is empty");
                parsed += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(rel))
                    .unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"));
                parsed += 1;
            }
            _ => {}
        }
    }
    for required in [
        "Dockerfile",
        "README.md",
        "compose.yaml",
        "haproxy/haproxy.cfg",
        "prometheus/prometheus.yml",
        "k8s/kustomization.yaml",
        "grafana/harvest-dashboard.json",
    ] {
        assert!(deploy_dir().join(required).is_file(), "deploy/{required}");
    }
    assert!(parsed >= 12, "only {parsed} YAML/JSON files parsed");

    // The kustomization lists every manifest beside it, and only those.
    let kustomization = yaml("k8s/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "k8s/kustomization.yaml resources");
}

/// One Dockerfile instruction per logical line (continuations joined, comments out).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() || trimmed.is_empty() {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(char::is_whitespace).unwrap();
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("{args} is not in exec form"))
}

#[test]
fn dockerfile_matches_the_code() {
    let instructions = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let one = |op: &str| -> &str {
        let found = all(op);
        assert_eq!(found.len(), 1, "one {op} in the Dockerfile: {found:?}");
        found[0]
    };

    // The builder's Rust is at least the workspace's rust-version.
    let workspace: toml::Table =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let msrv = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    let args: BTreeMap<&str, &str> = all("ARG")
        .into_iter()
        .filter_map(|a| a.split_once('='))
        .collect();
    let froms = all("FROM");
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    let builder = froms[0].replace("${RUST_VERSION}", args.get("RUST_VERSION").unwrap_or(&""));
    let pinned = builder
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the first stage builds on a rust image: {builder}"));
    let numbers =
        |v: &str| -> Vec<u32> { v.split(['-', '.']).map_while(|p| p.parse().ok()).collect() };
    assert!(
        !numbers(pinned).is_empty() && numbers(pinned) >= numbers(msrv),
        "builder {builder} does not pin a Rust at least as new as rust-version {msrv}"
    );
    assert!(
        all("RUN").iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")
            && r.contains("-p harvest-server")),
        "the builder runs cargo build --release --locked -p harvest-server"
    );

    // The runtime: port, environment, user, health check, stop signal, command.
    assert_eq!(one("EXPOSE"), PORT.to_string());
    let mut env = BTreeMap::new();
    for line in all("ENV") {
        for pair in line.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {line}: use KEY=VALUE"));
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    let settings = resolve("deploy/Dockerfile", &env);
    assert!(
        settings.data_dir.starts_with("/var/lib/harvest"),
        "{:?}",
        settings.data_dir
    );
    let volume = exec_form(one("VOLUME"));
    assert!(
        volume.iter().any(|v| settings.data_dir.starts_with(v)),
        "the data folder {:?} is in a volume {volume:?}",
        settings.data_dir
    );
    let user = one("USER");
    assert!(
        !["root", "0", "0:0"].contains(&user),
        "the image runs as root ({user})"
    );
    let healthcheck = one("HEALTHCHECK");
    assert!(
        healthcheck.contains(&format!("127.0.0.1:{PORT}/healthz")),
        "{healthcheck}"
    );
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    let binary = Path::new(env!("CARGO_BIN_EXE_harvest"))
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut command = exec_form(one("ENTRYPOINT"));
    command.extend(exec_form(one("CMD")));
    assert_eq!(command, [binary, "serve".to_owned()]);
}

/// The Harvest services of the compose file (those built from deploy/Dockerfile).
fn harvest_services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"))
        .map(|(name, s)| (name.as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

#[test]
fn compose_runs_several_nodes_behind_the_load_balancer() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let service_names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let image = |name: &str| services[name]["image"].as_str().unwrap_or("").to_owned();
    assert!(image("redis").starts_with("redis:7"), "{}", image("redis"));
    assert!(
        image("postgres").starts_with("postgres:16"),
        "{}",
        image("postgres")
    );

    let nodes = harvest_services(&compose);
    assert!(nodes.len() >= 2, "at least two Harvest nodes: {nodes:?}");
    let mut node_ids = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for (name, node) in &nodes {
        let env: BTreeMap<String, String> = node["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: environment as a mapping"))
            .iter()
            .map(|(k, v)| {
                let v = text(v).unwrap_or_else(|| panic!("{name}: {k:?} is not a scalar"));
                (k.as_str().unwrap().to_owned(), interpolate(&v))
            })
            .collect();
        let settings = resolve(&format!("compose service {name}"), &env);
        assert!(
            node_ids.insert(settings.node_id.clone()),
            "{name}: HARVEST_NODE_ID {} is not unique",
            settings.node_id
        );
        assert!(
            env.contains_key("HARVEST_NODE_ID"),
            "{name} sets HARVEST_NODE_ID"
        );
        secrets.insert(
            settings
                .jwt_secret
                .as_ref()
                .expect("a JWT secret")
                .expose()
                .to_owned(),
        );
        // Shared PostgreSQL and Redis, both services of this file.
        let db = url::Url::parse(settings.database_url.expose()).unwrap();
        assert_eq!(db.scheme(), "postgres", "{name}: nodes share PostgreSQL");
        assert!(service_names.contains(db.host_str().unwrap()), "{db}");
        for redis in settings
            .redis_url
            .as_ref()
            .expect("Redis")
            .expose()
            .split(',')
        {
            let redis = url::Url::parse(redis.trim()).unwrap();
            assert!(service_names.contains(redis.host_str().unwrap()), "{redis}");
        }
        let exposed: Vec<String> = node["expose"]
            .as_sequence()
            .map(|s| s.iter().filter_map(text).collect())
            .unwrap_or_default();
        assert_eq!(exposed, [PORT.to_string()], "{name}: expose");
        let check = node["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: a healthcheck"))
            .iter()
            .filter_map(text)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            check.contains(&format!("127.0.0.1:{PORT}/readyz")),
            "{name}: healthcheck {check}"
        );
        let grace = duration_s(node["stop_grace_period"].as_str().unwrap(), 1.0);
        assert!(
            grace >= 10.0 && grace >= shutdown_s(&settings),
            "{name}: stop_grace_period {grace}s < shutdown {}s",
            shutdown_s(&settings)
        );
        if let Some(signal) = node["stop_signal"].as_str() {
            assert_eq!(signal, "SIGTERM");
        }
    }
    assert_eq!(secrets.len(), 1, "every node shares one JWT secret");

    // The load balancer: HAProxy with its configuration from this folder.
    let lb = &services["lb"];
    assert!(image("lb").starts_with("haproxy:"), "{}", image("lb"));
    let mount = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .find(|v| v.contains("haproxy.cfg"))
        .expect("the HAProxy configuration is mounted");
    let source = mount.split(':').next().unwrap();
    assert_eq!(source, "./haproxy/haproxy.cfg");
    let cfg = haproxy(&read("haproxy/haproxy.cfg"));
    let published: Vec<String> = lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(text)
        .collect();
    assert!(
        published
            .iter()
            .any(|p| p.rsplit(':').next() == Some(&cfg.bind_port.to_string())),
        "lb ports {published:?} publish the bind port {}",
        cfg.bind_port
    );
    assert_eq!(cfg.bind_port, PORT);
    let upstream: BTreeSet<String> = cfg
        .servers
        .iter()
        .map(|(host, port)| {
            assert_eq!(*port, PORT, "upstream {host}");
            host.clone()
        })
        .collect();
    let expected: BTreeSet<String> = nodes.keys().cloned().collect();
    assert_eq!(upstream, expected, "the load balancer lists every node");
    assert_eq!(cfg.check_path.as_deref(), Some("/readyz"));
    assert!(
        cfg.tunnel_timeout_s >= 300.0,
        "WebSockets need a long tunnel timeout, not {}s",
        cfg.tunnel_timeout_s
    );
    assert!(
        cfg.http_mode,
        "HTTP mode (it handles the WebSocket upgrade)"
    );

    // Prometheus scrapes every node's port; Grafana gets the dashboard.
    let prometheus = yaml("prometheus/prometheus.yml");
    let harvest_job = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"].as_str() == Some("harvest"))
        .expect("a harvest scrape job");
    assert_eq!(harvest_job["metrics_path"].as_str(), Some("/metrics"));
    let targets: BTreeSet<String> = harvest_job["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = nodes.keys().map(|n| format!("{n}:{PORT}")).collect();
    assert_eq!(targets, expected, "Prometheus scrapes every node");
    for (name, service) in services {
        for volume in service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Yaml::as_str)
        {
            if let Some(rel) = volume.split(':').next().unwrap().strip_prefix("./") {
                assert!(
                    deploy_dir().join(rel).exists(),
                    "{name:?} mounts deploy/{rel}, which does not exist"
                );
            }
        }
    }
}

struct HaProxy {
    http_mode: bool,
    bind_port: u16,
    servers: Vec<(String, u16)>,
    check_path: Option<String>,
    tunnel_timeout_s: f64,
}

/// The parts of an HAProxy configuration the nodes depend on: the public frontend's
/// port (the first `bind`), its default backend's servers and health check, and the
/// tunnel timeout.
fn haproxy(cfg: &str) -> HaProxy {
    let mut sections: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for line in cfg.lines() {
        let line = line.split('#').next().unwrap();
        if line.trim().is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if !line.starts_with(char::is_whitespace) {
            sections.push((words.join(" "), Vec::new()));
        } else {
            sections.last_mut().expect("a section").1.push(words);
        }
    }
    let section = |head: &str| {
        sections
            .iter()
            .find(|(h, _)| h == head)
            .map(|(_, lines)| lines.clone())
            .unwrap_or_default()
    };
    let find = |lines: &[Vec<String>], key: &[&str]| -> Option<Vec<String>> {
        lines
            .iter()
            .find(|l| l.len() >= key.len() && l[..key.len()] == *key)
            .map(|l| l[key.len()..].to_vec())
    };
    let defaults = section("defaults");
    let (_, frontend) = sections
        .iter()
        .find(|(h, lines)| {
            h.starts_with("frontend ") && find(lines, &["default_backend"]).is_some()
        })
        .expect("a frontend with a default backend");
    let bind = find(frontend, &["bind"]).expect("bind");
    let bind_port = bind[0].rsplit(':').next().unwrap().parse().unwrap();
    let backend = section(&format!(
        "backend {}",
        find(frontend, &["default_backend"]).unwrap()[0]
    ));
    let servers = backend
        .iter()
        .filter(|l| l[0] == "server")
        .map(|l| {
            let (host, port) = l[2].rsplit_once(':').unwrap();
            (host.to_owned(), port.parse().unwrap())
        })
        .collect();
    let check_path = find(&backend, &["http-check", "send"]).and_then(|w| {
        let uri = w.iter().position(|x| x == "uri")?;
        w.get(uri + 1).cloned()
    });
    let checks_every_server = find(&backend, &["option", "httpchk"]).is_some()
        && (find(&backend, &["default-server"]).is_some_and(|w| w.contains(&"check".into()))
            || backend
                .iter()
                .filter(|l| l[0] == "server")
                .all(|l| l.contains(&"check".into())));
    assert!(checks_every_server, "every upstream is health-checked");
    HaProxy {
        http_mode: find(&defaults, &["mode"]).is_some_and(|m| m[0] == "http"),
        bind_port,
        servers,
        check_path,
        tunnel_timeout_s: find(&defaults, &["timeout", "tunnel"])
            .map(|t| duration_s(&t[0], 1e-3))
            .unwrap_or(0.0),
    }
}

/// Every Kubernetes object of deploy/k8s by kind.
fn k8s_objects() -> BTreeMap<String, Vec<Yaml>> {
    let kustomization = yaml("k8s/kustomization.yaml");
    let mut objects: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for resource in kustomization["resources"].as_sequence().unwrap() {
        for doc in yaml_docs(&format!("k8s/{}", resource.as_str().unwrap())) {
            let kind = doc["kind"].as_str().expect("a kind").to_owned();
            objects.entry(kind).or_default().push(doc);
        }
    }
    objects
}

fn only<'a>(objects: &'a BTreeMap<String, Vec<Yaml>>, kind: &str) -> &'a Yaml {
    let found = objects.get(kind).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(found.len(), 1, "one {kind} in deploy/k8s");
    &found[0]
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    let selector = selector.as_mapping().expect("matchLabels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_match_the_code() {
    let objects = k8s_objects();
    let deployment = only(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let container = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("harvest"))
        .expect("a harvest container");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(labels_match(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));

    // Ports: by number or by the container port's name.
    let ports: BTreeMap<String, u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports.values().copied().collect::<Vec<_>>(),
        [u64::from(PORT)]
    );
    let port_of = |v: &Yaml| -> u64 {
        match v {
            Yaml::String(name) => *ports
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => other.as_u64().expect("a port"),
        }
    };
    let probe = |name: &str| -> (String, u64) {
        let get = &container[name]["httpGet"];
        (
            get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} is an httpGet probe"))
                .to_owned(),
            port_of(&get["port"]),
        )
    };
    assert_eq!(probe("readinessProbe"), ("/readyz".into(), u64::from(PORT)));
    assert_eq!(probe("livenessProbe"), ("/healthz".into(), u64::from(PORT)));
    if !container["startupProbe"].is_null() {
        assert_eq!(probe("startupProbe"), ("/healthz".into(), u64::from(PORT)));
    }
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(PORT.to_string().as_str())
    );

    // The environment a pod gets: the ConfigMap, the Secret, literal values, and the
    // pod name as the node id.
    let config_maps = objects.get("ConfigMap").cloned().unwrap_or_default();
    let secrets = objects.get("Secret").cloned().unwrap_or_default();
    let named = |list: &[Yaml], name: &str| -> Yaml {
        list.iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no object named {name} in deploy/k8s"))
            .clone()
    };
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let (data, key) = if let Some(name) = source["configMapRef"]["name"].as_str() {
            (named(&config_maps, name)["data"].clone(), "data")
        } else {
            let name = source["secretRef"]["name"].as_str().unwrap();
            (named(&secrets, name)["stringData"].clone(), "stringData")
        };
        for (k, v) in data.as_mapping().unwrap_or_else(|| panic!("{key}")) {
            env.insert(k.as_str().unwrap().to_owned(), text(v).unwrap());
        }
    }
    let mut from_secret = BTreeSet::new();
    let mut node_id_from_pod = false;
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = text(&var["value"]) {
            v
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            if name == "HARVEST_NODE_ID" && field == "metadata.name" {
                node_id_from_pod = true;
            }
            format!("pod-{}", field.replace('.', "-"))
        } else if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
            let secret = named(
                &secrets,
                var["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap(),
            );
            from_secret.insert(name.clone());
            text(&secret["stringData"][key])
                .unwrap_or_else(|| panic!("the Secret has no key {key} for {name}"))
        } else {
            panic!("{name}: unsupported env source");
        };
        env.insert(name, value);
    }
    assert!(node_id_from_pod, "HARVEST_NODE_ID comes from the pod name");
    for secret in [
        "HARVEST_JWT_SECRET",
        "HARVEST_PAYMENT_WEBHOOK_SECRET",
        "HARVEST_DATABASE_URL",
    ] {
        assert!(from_secret.contains(secret), "{secret} comes from a Secret");
    }
    let settings = resolve("deploy/k8s Deployment", &env);
    assert!(
        !settings.payment_simulated,
        "production disables the simulated payment"
    );
    assert!(settings.redis_url.is_some(), "several pods share Redis");

    // Termination: the preStop sleep, then the whole shutdown, within the grace period.
    let pre_stop = &container["lifecycle"]["preStop"];
    let sleep_s = if let Some(s) = pre_stop["sleep"]["seconds"].as_u64() {
        s as f64
    } else {
        let command: Vec<String> = pre_stop["exec"]["command"]
            .as_sequence()
            .expect("a preStop sleep")
            .iter()
            .filter_map(text)
            .collect();
        assert!(command[0].ends_with("sleep"), "{command:?}");
        command[1].parse().unwrap()
    };
    assert!(sleep_s >= 1.0, "preStop sleeps {sleep_s}s");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap() as f64;
    assert!(
        grace >= 15.0 && grace >= sleep_s + shutdown_s(&settings),
        "terminationGracePeriodSeconds {grace} < preStop {sleep_s}s + shutdown {}s",
        shutdown_s(&settings)
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][kind][resource].is_null(),
                "resources.{kind}.{resource}"
            );
        }
    }

    // The Service sends its port to the container's.
    let service = only(&objects, "Service");
    assert!(labels_match(
        &service["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
    let service_ports = service["spec"]["ports"].as_sequence().unwrap();
    for p in service_ports {
        assert_eq!(p["port"].as_u64(), Some(u64::from(PORT)));
        assert_eq!(port_of(&p["targetPort"]), u64::from(PORT));
    }

    // Autoscaling on CPU, never below two nodes; disruptions one pod at a time.
    let hpa = only(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert!(
        hpa["spec"]["metrics"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| m["resource"]["name"].as_str() == Some("cpu")),
        "the autoscaler follows CPU"
    );
    let pdb = only(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));

    // The Ingress reaches the Service by a port it has.
    for ingress in objects.get("Ingress").into_iter().flatten() {
        for rule in ingress["spec"]["rules"].as_sequence().unwrap() {
            for path in rule["http"]["paths"].as_sequence().unwrap() {
                let backend = &path["backend"]["service"];
                assert_eq!(backend["name"], service["metadata"]["name"]);
                let port = &backend["port"];
                assert!(
                    service_ports
                        .iter()
                        .any(|p| (!port["name"].is_null() && p["name"] == port["name"])
                            || (!port["number"].is_null() && p["port"] == port["number"])),
                    "the Ingress names a port of the Service: {port:?}"
                );
            }
        }
    }

    // The kustomization's image is the container's.
    let kustomization = yaml("k8s/kustomization.yaml");
    let image = container["image"].as_str().unwrap();
    assert!(
        kustomization["images"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|i| i["name"].as_str() == Some(image)),
        "kustomization images name {image}"
    );
}

#[tokio::test]
async fn probe_paths_are_served() {
    let doc = harvest_server::app::openapi();
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(doc.paths.paths.contains_key(path), "{path} is not a route");
    }
    let app = spawn_app().await;
    app.get("/healthz", None).await.assert_status(200);
    app.get("/readyz", None).await.assert_status(200);
    app.get("/metrics", None).await.assert_status(200);
}

/// A PromQL token, as far as finding the series an expression reads goes.
#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Open,
    Close,
    Range,
    Other,
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '\\') => j += 1,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        panic!("unclosed {close} in {expr}")
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        match c {
            '{' => {
                i = skip_to(i, '}');
                continue;
            }
            '[' => {
                i = skip_to(i, ']');
                out.push(Token::Range);
                continue;
            }
            '"' | '\'' | '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == c)
                    .expect("closed string");
                i += end + 2;
                out.push(Token::Other);
                continue;
            }
            '$' => {
                // A Grafana variable.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i]))
                {
                    i += 1;
                }
                out.push(Token::Other);
                continue;
            }
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            c if c.is_whitespace() => {}
            c if c.is_ascii_digit() || c == '.' => {
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '.')
                {
                    i += 1;
                }
                out.push(Token::Other);
            }
            _ => out.push(Token::Other),
        }
        i += 1;
    }
    out
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];
const RATE_FUNCTIONS: &[&str] = &["rate", "irate", "increase"];

/// The series an expression reads, each with whether a rate-like function takes its
/// range.
fn series_in(expr: &str) -> Vec<(String, bool)> {
    let toks = tokens(expr);
    let mut out = Vec::new();
    // The function of each open parenthesis ("" for grouping).
    let mut calls: Vec<String> = Vec::new();
    // An aggregation written `sum by (x) (...)`: its call opens after the label list.
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Token::Ident(word)
                if LABEL_LISTS.contains(&word.as_str())
                    && toks.get(i + 1) == Some(&Token::Open) =>
            {
                let close = toks[i..]
                    .iter()
                    .position(|t| *t == Token::Close)
                    .expect("closed label list");
                i += close + 1;
                continue;
            }
            Token::Ident(word) if toks.get(i + 1) == Some(&Token::Open) => {
                calls.push(word.clone());
                i += 2;
                continue;
            }
            Token::Ident(word) if AGGREGATIONS.contains(&word.as_str()) => {
                pending = Some(word.clone());
            }
            Token::Ident(word)
                if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    || LABEL_LISTS.contains(&word.as_str()) => {}
            Token::Ident(series) => {
                let rated = toks.get(i + 1) == Some(&Token::Range)
                    && calls
                        .last()
                        .is_some_and(|f| RATE_FUNCTIONS.contains(&f.as_str()));
                out.push((series.clone(), rated));
            }
            Token::Open => calls.push(pending.take().unwrap_or_default()),
            Token::Close => {
                calls.pop();
            }
            Token::Range | Token::Other => {}
        }
        i += 1;
    }
    out
}

/// Every query of a dashboard: panel targets (rows included) and query variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_owned());
                }
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap();
        // Grafana's label_values(SELECTOR, label): the selector is PromQL.
        let query = match query.strip_prefix("label_values(") {
            Some(args) => args.rsplit_once(',').map_or(args, |(s, _)| s).to_owned(),
            None => query.to_owned(),
        };
        out.push(query);
    }
    out
}

#[test]
fn the_query_scanner_finds_series_and_rates() {
    assert_eq!(
        series_in(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x=~"$i",s="5.."}[$__rate_interval])))"#
        ),
        [("a_bucket".to_owned(), true)]
    );
    assert_eq!(
        series_in("sum(rate(b_total[5m])) / sum(c) by (instance) + max(d{q=\"}\"})"),
        [
            ("b_total".to_owned(), true),
            ("c".to_owned(), false),
            ("d".to_owned(), false)
        ]
    );
    assert_eq!(series_in("count(e) > bool 2"), [("e".to_owned(), false)]);
}

#[tokio::test]
async fn dashboard_queries_only_exported_series() {
    let dashboard: Value = serde_json::from_str(&read("grafana/harvest-dashboard.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{} queries", queries.len());

    // A node with a little of everything: HTTP, a WebSocket viewer, a flash sale, a
    // reservation and a paid order.
    let app = spawn_app().await;
    let owner = app.streamer("coop-deploy");
    let room = app.create_room(&owner, "deploy").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = app.create_product(&owner, "kiwi-deploy").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/api/v1/rooms/{room}/products"),
        Some(&owner),
        &json!({"product_id": product}),
    )
    .await
    .assert_status(200);
    let mut viewer = WsClient::connect(&app.base_url, &room, "", None).await;
    viewer.event_of("room.snapshot").await;
    app.post(
        &format!("/api/v1/rooms/{room}/start"),
        Some(&owner),
        &json!({}),
    )
    .await
    .assert_status(200);
    let sale = app
        .post(
            &format!("/api/v1/rooms/{room}/flash-sales"),
            Some(&owner),
            &json!({"product_id": product, "price": 990, "stock": 5}),
        )
        .await;
    sale.assert_status(201);
    let buyer = app.viewer("buyer-deploy");
    let hold = app
        .reserve(
            &buyer,
            sale.body["id"].as_str().unwrap(),
            "deploy-1",
            &json!({}),
        )
        .await;
    hold.assert_status(201);
    app.request_with(
        reqwest::Method::POST,
        &format!(
            "/api/v1/holds/{}/checkout",
            hold.body["id"].as_str().unwrap()
        ),
        Some(&buyer),
        &[("Idempotency-Key", "deploy-pay-1")],
        Some(&json!({"method": "simulated"})),
    )
    .await
    .assert_status(200);
    viewer.event_of("sale.started").await;

    let scrape = app.get("/metrics", None).await;
    scrape.assert_status(200);
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: BTreeSet<String> = BTreeSet::new();
    for line in scrape.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), kind.trim().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap();
            samples.insert(line[..end].to_owned());
        }
    }
    let family_of = |series: &str| -> (String, String) {
        for suffix in ["_bucket", "_sum", "_count", ""] {
            if let Some(base) = series.strip_suffix(suffix)
                && let Some(kind) = families.get(base)
            {
                return (base.to_owned(), kind.clone());
            }
        }
        panic!("the dashboard queries {series}, which /metrics does not declare")
    };

    let mut shown = BTreeSet::new();
    for query in &queries {
        let series = series_in(query);
        assert!(!series.is_empty(), "no series in {query}");
        for (name, rated) in series {
            assert!(
                samples.contains(&name),
                "the dashboard queries {name}, which /metrics does not export:\n{}",
                scrape.text
            );
            let (family, kind) = family_of(&name);
            if name.ends_with("_bucket") {
                assert_eq!(kind, "histogram", "{name} is read as a histogram");
            }
            if rated {
                assert!(
                    kind == "counter" || kind == "histogram",
                    "{query}: rate over {name}, a {kind}"
                );
            } else if kind == "counter" {
                panic!("{query}: the counter {name} is shown raw, not as a rate");
            }
            shown.insert(family);
        }
    }
    // And the dashboard shows every Harvest series the node exports.
    for family in families.keys().filter(|f| f.starts_with("harvest_")) {
        assert!(
            shown.contains(family),
            "the dashboard does not show {family}"
        );
    }
    for required in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
        assert!(
            shown.contains(required),
            "the dashboard does not show {required}"
        );
    }
    viewer.close().await;
    app.stop().await;
}
