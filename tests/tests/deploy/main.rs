//! `deploy/`: the manifests parse and say what they must, the containerd
//! snippets put the runtime where their version wants it, the documented
//! `config.toml` is exactly the shim's defaults, and `install.sh` installs
//! and uninstalls against a scratch host root, idempotently.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hull_shim::config::Config;
use serde::Deserialize as _;
use serde_yaml::Value;

mod install;

const BINARIES: [&str; 4] = [
    "containerd-shim-hull-v2",
    "hull-vmm",
    "virtiofsd",
    "vhost-device-vsock",
];
const GUEST_FILES: [&str; 2] = ["vmlinux", "initramfs.cpio.gz"];
const BEGIN_MARKER: &str = "# BEGIN hull runtime";
const END_MARKER: &str = "# END hull runtime";
const NODE_LABEL: &str = "hull.dev/runtime";

/// bench/README.md's medians (KiB) for the hull backend, and the shim's RSS
/// that deploy/README.md uses.
const MEASURED_KIB: [u64; 4] = [3256, 2152, 44564, 14336];

/// bench/RESULTS.md's PSS (KiB) per hull pod: hull-vmm and virtiofsd with
/// guest RAM (KVM test host), and the shim (10 idle pods).
const BENCH_PSS_KIB: [u64; 2] = [53381, 2305];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn deploy(name: &str) -> PathBuf {
    repo().join("deploy").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn yaml_documents(name: &str) -> Vec<Value> {
    let text = read(&deploy(name));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|err| panic!("{name}: {err}")))
        .filter(|value| !value.is_null())
        .collect()
}

/// The value at a dotted path (`[n]` picks a list item), or a panic that
/// names the path.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    let mut current = value;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (
                key,
                Some(rest.trim_end_matches(']').parse::<usize>().expect("index")),
            ),
            None => (part, None),
        };
        if !key.is_empty() {
            current = current
                .get(key)
                .unwrap_or_else(|| panic!("{path}: no {key:?} in {current:?}"));
        }
        if let Some(index) = index {
            current = current
                .get(index)
                .unwrap_or_else(|| panic!("{path}: no item {index}"));
        }
    }
    current
}

fn string<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn list<'a>(value: &'a Value, path: &str) -> &'a Vec<Value> {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

/// A Kubernetes quantity (`96Mi`, `100m`, `1.5G`, `2e3`) as a number.
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[test]
fn quantities_parse_as_kubernetes_reads_them() {
    assert_eq!(quantity("96Mi"), Some(96.0 * 1024.0 * 1024.0));
    assert_eq!(quantity("100m"), Some(0.1));
    assert_eq!(quantity("2"), Some(2.0));
    assert_eq!(quantity("1e3"), Some(1000.0));
    for bad in ["", "Mi", "96MiB", "ten", "1.5x"] {
        assert_eq!(quantity(bad), None, "{bad}");
    }
}

#[test]
fn the_runtime_class_names_the_hull_handler_with_its_overhead() {
    let documents = yaml_documents("runtimeclass.yaml");
    assert_eq!(documents.len(), 1, "one RuntimeClass");
    let class = &documents[0];
    assert_eq!(string(class, "apiVersion"), "node.k8s.io/v1");
    assert_eq!(string(class, "kind"), "RuntimeClass");
    assert_eq!(string(class, "metadata.name"), "hull");
    assert_eq!(string(class, "handler"), "hull");

    let memory = string(class, "overhead.podFixed.memory");
    let memory = quantity(memory).unwrap_or_else(|| panic!("memory {memory:?}"));
    let measured: u64 = MEASURED_KIB.iter().sum();
    assert!(
        memory >= (measured * 1024) as f64,
        "podFixed memory {memory} is below the measured {measured} KiB"
    );
    let pss: u64 = BENCH_PSS_KIB.iter().sum();
    assert!(
        memory >= (pss * 1024) as f64,
        "podFixed memory {memory} is below the measured PSS {pss} KiB"
    );
    let cpu = string(class, "overhead.podFixed.cpu");
    let cpu = quantity(cpu).unwrap_or_else(|| panic!("cpu {cpu:?}"));
    assert!(cpu > 0.0 && cpu < 1.0, "cpu {cpu}");
    // The shim takes the same overhead off the pod cgroup's limits when it
    // sizes the VM (deploy/config.toml's pod_overhead_*).
    let config = Config::default();
    assert_eq!(
        (
            f64::from(config.pod_overhead_memory_mib) * 1024.0 * 1024.0,
            f64::from(config.pod_overhead_cpu_millis) / 1000.0
        ),
        (memory, cpu),
        "pod_overhead_memory_mib and pod_overhead_cpu_millis are the RuntimeClass overhead"
    );

    // The nodes install.sh labels, with a string value as a selector needs.
    assert_eq!(
        at(class, "scheduling.nodeSelector")
            .get(NODE_LABEL)
            .and_then(Value::as_str),
        Some("true")
    );
    assert!(read(&deploy("install.sh")).contains(&format!("node_label={NODE_LABEL}\n")));

    // The derivation is written down where the figures are used.
    for text in [
        read(&deploy("runtimeclass.yaml")),
        read(&deploy("README.md")),
    ] {
        for figure in MEASURED_KIB {
            assert!(text.contains(&figure.to_string()), "{figure} not stated");
        }
        assert!(
            text.contains(&measured.to_string()),
            "{measured} not stated"
        );
    }

    // The PSS figures it is set from, with their sum and the headroom, as
    // bench/RESULTS.md measured them.
    let class_text = read(&deploy("runtimeclass.yaml"));
    let results = read(&repo().join("bench/RESULTS.md"));
    for figure in BENCH_PSS_KIB {
        assert!(
            class_text.contains(&figure.to_string()),
            "{figure} not stated in runtimeclass.yaml"
        );
        assert!(
            results.contains(&format!("| {figure} |")) || results.contains(&format!(" {figure},")),
            "{figure} is not in bench/RESULTS.md"
        );
    }
    assert!(class_text.contains(&pss.to_string()), "{pss} not stated");
    assert!(class_text.contains("Headroom"), "no headroom stated");
}

#[test]
fn the_installer_daemonset_is_complete() {
    let documents = yaml_documents("hull-deploy.yaml");
    let of_kind = |kind: &str| -> &Value {
        let found: Vec<&Value> = documents
            .iter()
            .filter(|document| string(document, "kind") == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    };

    let account = of_kind("ServiceAccount");
    assert_eq!(string(account, "apiVersion"), "v1");
    let account_name = string(account, "metadata.name");
    assert_eq!(string(account, "metadata.namespace"), "kube-system");

    let role = of_kind("ClusterRole");
    assert_eq!(string(role, "apiVersion"), "rbac.authorization.k8s.io/v1");
    let rule = &list(role, "rules")[0];
    assert!(list(rule, "resources").contains(&Value::from("nodes")));
    assert!(list(rule, "verbs").contains(&Value::from("patch")));

    let binding = of_kind("ClusterRoleBinding");
    assert_eq!(string(binding, "roleRef.kind"), "ClusterRole");
    assert_eq!(
        string(binding, "roleRef.name"),
        string(role, "metadata.name")
    );
    assert_eq!(string(binding, "subjects[0].kind"), "ServiceAccount");
    assert_eq!(string(binding, "subjects[0].name"), account_name);
    assert_eq!(string(binding, "subjects[0].namespace"), "kube-system");

    let daemonset = of_kind("DaemonSet");
    assert_eq!(string(daemonset, "apiVersion"), "apps/v1");
    assert_eq!(string(daemonset, "metadata.namespace"), "kube-system");
    assert_eq!(
        at(daemonset, "spec.selector.matchLabels"),
        at(daemonset, "spec.template.metadata.labels"),
        "the selector picks the template's pods"
    );
    let pod = at(daemonset, "spec.template.spec");
    assert_eq!(string(pod, "serviceAccountName"), account_name);
    assert_eq!(at(pod, "hostPID"), &Value::from(true));

    let containers = list(pod, "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(
        string(container, "image"),
        format!("hull/deploy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        at(container, "securityContext.privileged"),
        &Value::from(true)
    );
    let command: Vec<&str> = list(container, "command")
        .iter()
        .map(|part| part.as_str().expect("command word"))
        .collect();
    assert_eq!(command, ["/opt/hull-deploy/install.sh", "run"]);
    assert!(
        read(&deploy("Dockerfile")).contains("COPY install.sh /opt/hull-deploy/install.sh\n"),
        "the image has install.sh where the DaemonSet runs it"
    );

    let env: BTreeMap<&str, &Value> = list(container, "env")
        .iter()
        .map(|var| (string(var, "name"), var))
        .collect();
    assert_eq!(
        string(env["NODE_NAME"], "valueFrom.fieldRef.fieldPath"),
        "spec.nodeName"
    );
    assert_eq!(string(env["HOST_ROOT"], "value"), "/host");
    assert_eq!(string(env["HULL_UNINSTALL_ON_EXIT"], "value"), "false");

    // Every volume is mounted and every mount has a volume, by name; each
    // host path appears under HOST_ROOT at its own path.
    let volumes: BTreeMap<&str, &str> = list(pod, "volumes")
        .iter()
        .map(|volume| (string(volume, "name"), string(volume, "hostPath.path")))
        .collect();
    let mounts: BTreeMap<&str, &str> = list(container, "volumeMounts")
        .iter()
        .map(|mount| (string(mount, "name"), string(mount, "mountPath")))
        .collect();
    assert_eq!(
        volumes.keys().collect::<Vec<_>>(),
        mounts.keys().collect::<Vec<_>>(),
        "volumes and volumeMounts match by name"
    );
    for (name, host_path) in &volumes {
        assert_eq!(mounts[name], format!("/host{host_path}"), "{name}");
    }
    let host_paths: BTreeSet<&str> = volumes.values().copied().collect();
    for needed in [
        "/opt/hull",
        "/etc/hull",
        "/etc/containerd",
        "/usr/local/bin",
    ] {
        assert!(host_paths.contains(needed), "{needed} is not mounted");
    }
    assert_eq!(
        list(container, "readinessProbe.exec.command")[2],
        Value::from("/tmp/hull-deploy.ready")
    );
    assert!(read(&deploy("install.sh")).contains("/tmp/hull-deploy.ready"));
}

fn toml_at<'a>(value: &'a toml::Value, path: &[&str]) -> &'a toml::Value {
    path.iter().fold(value, |current, key| {
        current
            .get(key)
            .unwrap_or_else(|| panic!("no {key:?} on the way to {path:?}"))
    })
}

/// The table path of the `hull` runtime in a containerd config of
/// `version`.
fn runtime_path(version: i64) -> [&'static str; 5] {
    let plugin = match version {
        2 => "io.containerd.grpc.v1.cri",
        3 => "io.containerd.cri.v1.runtime",
        other => panic!("version {other}"),
    };
    ["plugins", plugin, "containerd", "runtimes", "hull"]
}

/// Checks the `hull` runtime in a parsed containerd config.
fn assert_hull_runtime(config: &toml::Value, version: i64) {
    let runtime = toml_at(config, &runtime_path(version));
    assert_eq!(
        runtime.get("runtime_type").and_then(toml::Value::as_str),
        Some("io.containerd.hull.v2")
    );
    assert_eq!(
        toml_at(runtime, &["options", "ConfigPath"]).as_str(),
        Some(hull_shim::config::DEFAULT_PATH)
    );
    let annotations = runtime
        .get("pod_annotations")
        .and_then(toml::Value::as_array)
        .expect("pod_annotations");
    assert!(annotations.contains(&toml::Value::from("io.hull.*")));
}

#[test]
fn the_containerd_snippets_put_the_runtime_at_their_versions_path() {
    for version in [2, 3] {
        let name = format!("containerd/config-v{version}.toml");
        let config: toml::Value =
            toml::from_str(&read(&deploy(&name))).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(config.get("version"), Some(&toml::Value::from(version)));
        assert_hull_runtime(&config, version);
        // Nothing at the other version's path.
        let other = runtime_path(5 - version)[1];
        assert!(config["plugins"].get(other).is_none(), "{name} has {other}");
    }
}

/// `containerd config dump` of `file`, when containerd is installed (the
/// test set-up installs 1.6): proof that containerd itself reads the hull
/// runtime from a version 2 file.
fn containerd_reads(file: &Path) {
    if Command::new("containerd")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "containerd is not installed: not loading {}",
            file.display()
        );
        return;
    }
    let output = Command::new("containerd")
        .arg("--config")
        .arg(file)
        .args(["config", "dump"])
        .output()
        .expect("containerd config dump");
    assert!(output.status.success(), "{output:?}");
    let dumped: toml::Value =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("dump parses");
    assert_hull_runtime(&dumped, 2);
}

#[test]
fn containerd_reads_the_v2_snippet() {
    containerd_reads(&deploy("containerd/config-v2.toml"));
}

/// The options of the shim's config file, from `struct File` in
/// config/src/lib.rs, so that a new option cannot miss the docs.
fn config_file_options() -> Vec<String> {
    let source = read(&repo().join("config/src/lib.rs"));
    let body = source
        .split_once("struct File {")
        .expect("struct File in config/src/lib.rs")
        .1
        .split_once('}')
        .expect("end of struct File")
        .0;
    let options: Vec<String> = body
        .lines()
        .filter_map(|line| line.trim().split_once(": Option<"))
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(options.len() >= 10, "read {options:?} from struct File");
    options
}

#[test]
fn the_documented_config_is_exactly_the_defaults_and_names_every_option() {
    let text = read(&deploy("config.toml"));
    assert_eq!(
        Config::parse(&text).expect("deploy/config.toml parses"),
        Config::default()
    );
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    let options = config_file_options();
    // An option with no default (a file that is off unless named) is shown
    // commented out, as `# NAME = ...`.
    let shown_off: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# ")?.split_once(" = "))
        .map(|(name, _)| name)
        .filter(|name| options.iter().any(|option| option == name))
        .collect();
    assert_eq!(
        table
            .keys()
            .map(String::as_str)
            .chain(shown_off.iter().copied())
            .collect::<BTreeSet<_>>(),
        options.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "deploy/config.toml sets every option of the shim's file, and no other"
    );
    assert_eq!(
        Config::parse(&format!(
            "{text}\nagent_policy_file = \"/etc/hull/agent-policy.toml\"\n"
        ))
        .expect("the commented-out option parses")
        .agent_policy_file
        .as_deref(),
        Some(std::path::Path::new("/etc/hull/agent-policy.toml"))
    );
    // Each option sits in a paragraph that has a comment.
    for paragraph in text.split("\n\n") {
        let sets = paragraph.lines().any(|line| line.contains(" = "));
        let explains = paragraph.lines().any(|line| line.starts_with('#'));
        assert!(!sets || explains, "no comment for:\n{paragraph}");
    }
}
