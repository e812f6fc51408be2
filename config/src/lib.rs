//! Hull's node configuration: `/etc/hull/config.toml`, or the file named by
//! `$HULL_CONFIG`, or by the shim's runtime option `ConfigPath` (which
//! wins), plus per-pod annotations. Every value is checked; a bad one is an
//! error that names it.
//!
//! Its own crate so that the shim and the `hull` CLI read it alike without
//! either depending on the other. The backend's kinds are
//! `hull-hypervisor`'s, which both depend on anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hull_hypervisor::BackendKind;
use serde::Deserialize;

/// A bad configuration file or annotation; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ConfigError>;

pub const DEFAULT_PATH: &str = "/etc/hull/config.toml";
pub const PATH_ENV: &str = "HULL_CONFIG";
pub const VCPUS_ANNOTATION: &str = "io.hull.vcpus";
pub const MEMORY_ANNOTATION: &str = "io.hull.memory_mib";
/// The prefix of Hull's own annotations; one the shim does not know is
/// refused, so that a typo does not pass silently.
pub const ANNOTATION_PREFIX: &str = "io.hull.";
/// Every annotation `enable_annotations` may list.
pub const ANNOTATIONS: [&str; 2] = [VCPUS_ANNOTATION, MEMORY_ANNOTATION];

/// The file as written; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    backend: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    hull_vmm: Option<String>,
    default_vcpus: Option<u32>,
    default_memory_mib: Option<u32>,
    max_vcpus: Option<u32>,
    max_memory_mib: Option<u32>,
    pod_overhead_memory_mib: Option<u32>,
    pod_overhead_cpu_millis: Option<u32>,
    default_pids_limit: Option<u32>,
    log_level: Option<String>,
    state_dir: Option<PathBuf>,
    agent_policy_file: Option<PathBuf>,
    enable_annotations: Option<Vec<String>>,
}

/// The checked configuration, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub backend: BackendKind,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The hull-vmm binary: a path, or a name looked up in PATH.
    pub hull_vmm: String,
    pub default_vcpus: u32,
    pub default_memory_mib: u32,
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    /// The RuntimeClass's `overhead.podFixed` (memory, and CPU in
    /// millicores): the kubelet adds it to the pod cgroup's limits, and the
    /// VM is sized from those limits less it.
    pub pod_overhead_memory_mib: u32,
    pub pod_overhead_cpu_millis: u32,
    /// `pids.max` of every container whose spec sets no pids limit; 0 for
    /// none. The kubelet's pod pids limit bounds only the host's side of a
    /// pod (shim, VMM), never the processes in its guest.
    pub default_pids_limit: u32,
    pub log_level: String,
    /// Where each pod gets its directory (shared directory, sockets, logs).
    pub state_dir: PathBuf,
    /// RPCs the agent refuses (the shim's `policy` module); read at each
    /// pod's creation.
    pub agent_policy_file: Option<PathBuf>,
    /// The `io.hull.*` annotations a pod may size its VM with; none by
    /// default, since the pod's cgroup (the kubelet's limits plus the
    /// RuntimeClass overhead) is all that bounds what a VM asked for
    /// this way. Within `max_vcpus` and `max_memory_mib`.
    pub enable_annotations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: BackendKind::Auto,
            kernel: PathBuf::from("/var/cache/hull/guest/vmlinux"),
            initrd: PathBuf::from("/var/cache/hull/guest/initramfs.cpio.gz"),
            hull_vmm: "hull-vmm".into(),
            default_vcpus: 1,
            default_memory_mib: 512,
            max_vcpus: 8,
            max_memory_mib: 16384,
            pod_overhead_memory_mib: 96,
            pod_overhead_cpu_millis: 100,
            default_pids_limit: 4096,
            log_level: "info".into(),
            state_dir: PathBuf::from("/run/hull"),
            agent_policy_file: None,
            enable_annotations: Vec::new(),
        }
    }
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|err| {
            let field = err
                .span()
                .and_then(|span| key_at(text, span.start))
                .unwrap_or_else(|| "config.toml".to_owned());
            ConfigError::invalid(field, err.message().to_owned())
        })?;
        let defaults = Self::default();
        let config = Self {
            backend: match file.backend {
                Some(name) => name.parse().map_err(|err: hull_hypervisor::VmError| {
                    ConfigError::invalid("backend", reason_of(&err))
                })?,
                None => defaults.backend,
            },
            kernel: file.kernel.unwrap_or(defaults.kernel),
            initrd: file.initrd.unwrap_or(defaults.initrd),
            hull_vmm: file.hull_vmm.unwrap_or(defaults.hull_vmm),
            default_vcpus: file.default_vcpus.unwrap_or(defaults.default_vcpus),
            default_memory_mib: file
                .default_memory_mib
                .unwrap_or(defaults.default_memory_mib),
            max_vcpus: file.max_vcpus.unwrap_or(defaults.max_vcpus),
            max_memory_mib: file.max_memory_mib.unwrap_or(defaults.max_memory_mib),
            pod_overhead_memory_mib: file
                .pod_overhead_memory_mib
                .unwrap_or(defaults.pod_overhead_memory_mib),
            pod_overhead_cpu_millis: file
                .pod_overhead_cpu_millis
                .unwrap_or(defaults.pod_overhead_cpu_millis),
            default_pids_limit: file
                .default_pids_limit
                .unwrap_or(defaults.default_pids_limit),
            log_level: file.log_level.unwrap_or(defaults.log_level),
            state_dir: file.state_dir.unwrap_or(defaults.state_dir),
            agent_policy_file: file.agent_policy_file,
            enable_annotations: file.enable_annotations.unwrap_or_default(),
        };
        config.check()?;
        Ok(config)
    }

    /// Reads the file at `path`; a missing default file means the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|err| match err {
                ConfigError::Invalid { field, reason } => {
                    ConfigError::invalid(format!("{}: {field}", path.display()), reason)
                }
                other => other,
            }),
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_PATH) =>
            {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Io {
                context: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    /// The file to read: the runtime option, else `$HULL_CONFIG`, else the
    /// default path.
    pub fn path(runtime_option: Option<&str>) -> PathBuf {
        runtime_option
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os(PATH_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    fn check(&self) -> Result<()> {
        for (field, path) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("state_dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    field,
                    format!("{} is not an absolute path", path.display()),
                ));
            }
        }
        if let Some(path) = &self.agent_policy_file
            && !path.is_absolute()
        {
            return Err(ConfigError::invalid(
                "agent_policy_file",
                format!("{} is not an absolute path", path.display()),
            ));
        }
        for (index, name) in self.enable_annotations.iter().enumerate() {
            if !ANNOTATIONS.contains(&name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("enable_annotations[{index}]"),
                    format!("{name:?} is not one of {}", ANNOTATIONS.join(", ")),
                ));
            }
        }
        if self.hull_vmm.is_empty() {
            return Err(ConfigError::invalid("hull_vmm", "is empty"));
        }
        if !(1..=64).contains(&self.max_vcpus) {
            return Err(ConfigError::invalid(
                "max_vcpus",
                format!("{} is not between 1 and 64", self.max_vcpus),
            ));
        }
        if !(1..=self.max_vcpus).contains(&self.default_vcpus) {
            return Err(ConfigError::invalid(
                "default_vcpus",
                format!(
                    "{} is not between 1 and max_vcpus ({})",
                    self.default_vcpus, self.max_vcpus
                ),
            ));
        }
        if !(MIN_MEMORY_MIB..=1_048_576).contains(&self.max_memory_mib) {
            return Err(ConfigError::invalid(
                "max_memory_mib",
                format!("{} is not between 64 and 1048576", self.max_memory_mib),
            ));
        }
        if !(MIN_MEMORY_MIB..=self.max_memory_mib).contains(&self.default_memory_mib) {
            return Err(ConfigError::invalid(
                "default_memory_mib",
                format!(
                    "{} is not between 64 and max_memory_mib ({})",
                    self.default_memory_mib, self.max_memory_mib
                ),
            ));
        }
        if self.pod_overhead_memory_mib > self.max_memory_mib {
            return Err(ConfigError::invalid(
                "pod_overhead_memory_mib",
                format!(
                    "{} is more than max_memory_mib ({})",
                    self.pod_overhead_memory_mib, self.max_memory_mib
                ),
            ));
        }
        if self.pod_overhead_cpu_millis > self.max_vcpus * 1000 {
            return Err(ConfigError::invalid(
                "pod_overhead_cpu_millis",
                format!(
                    "{} is more than max_vcpus ({}) CPUs",
                    self.pod_overhead_cpu_millis, self.max_vcpus
                ),
            ));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(ConfigError::invalid(
                "log_level",
                format!(
                    "{:?} is not one of {}",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The vCPUs and memory a pod's annotations ask for, where
    /// `enable_annotations` lets them through, within the configured
    /// maxima; `None` for what they leave to the pod's limits or the
    /// defaults. An annotation that is not enabled is refused, naming it
    /// (as Kata does), rather than ignored: the pod would otherwise run with
    /// another size than it asked for, and nobody would know.
    pub fn annotated_size(&self, annotations: &HashMap<String, String>) -> Result<AnnotatedSize> {
        let mut ours: Vec<&String> = annotations
            .keys()
            .filter(|key| key.starts_with(ANNOTATION_PREFIX))
            .collect();
        ours.sort();
        for key in ours {
            if !ANNOTATIONS.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    key.as_str(),
                    format!(
                        "is not an annotation Hull knows ({})",
                        ANNOTATIONS.join(", ")
                    ),
                ));
            }
            if !self.enable_annotations.contains(key) {
                return Err(ConfigError::invalid(
                    key.as_str(),
                    "is not enabled: the node's Hull config (enable_annotations) does not let pods size their VM",
                ));
            }
        }
        let read = |key: &str, min: u32, max: u32| -> Result<Option<u32>> {
            let Some(value) = annotations.get(key) else {
                return Ok(None);
            };
            let number: u32 = value.trim().parse().map_err(|_| {
                ConfigError::invalid(key, format!("{value:?} is not a whole number"))
            })?;
            if !(min..=max).contains(&number) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{number} is not between {min} and {max}"),
                ));
            }
            Ok(Some(number))
        };
        Ok(AnnotatedSize {
            vcpus: read(VCPUS_ANNOTATION, 1, self.max_vcpus)?,
            memory_mib: read(MEMORY_ANNOTATION, MIN_MEMORY_MIB, self.max_memory_mib)?,
        })
    }
}

/// The smallest VM Hull boots, in MiB.
pub const MIN_MEMORY_MIB: u32 = 64;

/// What a pod's `io.hull.*` annotations ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnotatedSize {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
}

fn reason_of(err: &hull_hypervisor::VmError) -> String {
    match err {
        hull_hypervisor::VmError::Config { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The key on the line where a TOML error starts, so the error names it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split('=').next()?.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").expect("parse"), Config::default());
    }

    #[test]
    fn every_option_is_read() {
        let config = Config::parse(
            r#"
backend = "qemu"
kernel = "/k"
initrd = "/i"
hull_vmm = "/usr/bin/hull-vmm"
default_vcpus = 2
default_memory_mib = 256
max_vcpus = 4
max_memory_mib = 1024
pod_overhead_memory_mib = 160
pod_overhead_cpu_millis = 250
default_pids_limit = 100
log_level = "debug"
state_dir = "/run/h"
agent_policy_file = "/etc/hull/p.toml"
enable_annotations = ["io.hull.vcpus"]
"#,
        )
        .expect("parse");
        assert_eq!(config.backend, BackendKind::Qemu);
        assert_eq!((config.default_vcpus, config.default_memory_mib), (2, 256));
        assert_eq!((config.max_vcpus, config.max_memory_mib), (4, 1024));
        assert_eq!(
            (
                config.pod_overhead_memory_mib,
                config.pod_overhead_cpu_millis
            ),
            (160, 250)
        );
        assert_eq!(config.default_pids_limit, 100);
        assert_eq!(config.state_dir, PathBuf::from("/run/h"));
        assert_eq!(
            config.agent_policy_file,
            Some(PathBuf::from("/etc/hull/p.toml"))
        );
        assert_eq!(config.enable_annotations, [VCPUS_ANNOTATION]);
    }

    #[test]
    fn a_bad_value_names_its_option() {
        for (text, field) in [
            ("backend = \"firecracker\"", "backend"),
            ("kernel = \"relative/vmlinux\"", "kernel"),
            ("initrd = \"initrd.img\"", "initrd"),
            ("hull_vmm = \"\"", "hull_vmm"),
            ("default_vcpus = 0", "default_vcpus"),
            ("default_vcpus = 9", "default_vcpus"),
            ("default_memory_mib = 8", "default_memory_mib"),
            ("max_vcpus = 100", "max_vcpus"),
            ("max_memory_mib = 1", "max_memory_mib"),
            (
                "max_memory_mib = 1024\npod_overhead_memory_mib = 2048",
                "pod_overhead_memory_mib",
            ),
            (
                "max_vcpus = 1\ndefault_vcpus = 1\npod_overhead_cpu_millis = 1500",
                "pod_overhead_cpu_millis",
            ),
            ("log_level = \"loud\"", "log_level"),
            ("state_dir = \"run\"", "state_dir"),
            ("agent_policy_file = \"policy.toml\"", "agent_policy_file"),
            ("default_vcpus = \"two\"", "default_vcpus"),
            ("default_pids_limit = -1", "default_pids_limit"),
            ("vcpus = 2", "vcpus"),
            (
                "enable_annotations = [\"io.hull.vcpus\", \"io.kata.x\"]",
                "enable_annotations[1]",
            ),
        ] {
            assert_eq!(field_of(text), field, "{text}");
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn annotations_are_refused_unless_enabled() {
        let config = Config::default();
        for key in ANNOTATIONS {
            let err = config
                .annotated_size(&annotations(&[(key, "2")]))
                .expect_err(key)
                .to_string();
            assert!(err.starts_with(&format!("{key}: is not enabled")), "{err}");
        }
        let only_vcpus = Config {
            enable_annotations: vec![VCPUS_ANNOTATION.to_owned()],
            ..Config::default()
        };
        assert_eq!(
            only_vcpus
                .annotated_size(&annotations(&[(VCPUS_ANNOTATION, "2")]))
                .unwrap(),
            AnnotatedSize {
                vcpus: Some(2),
                memory_mib: None
            }
        );
        let err = only_vcpus
            .annotated_size(&annotations(&[(MEMORY_ANNOTATION, "16384")]))
            .expect_err("memory is not enabled")
            .to_string();
        assert!(
            err.starts_with("io.hull.memory_mib: is not enabled"),
            "{err}"
        );
        let err = only_vcpus
            .annotated_size(&annotations(&[("io.hull.memory", "1024")]))
            .expect_err("unknown")
            .to_string();
        assert!(
            err.starts_with("io.hull.memory: is not an annotation Hull knows"),
            "{err}"
        );
        // Other annotations are not Hull's business.
        assert_eq!(
            Config::default()
                .annotated_size(&annotations(&[("io.kubernetes.cri.sandbox-id", "x")]))
                .unwrap(),
            AnnotatedSize::default()
        );
    }

    #[test]
    fn annotations_size_the_pod_within_limits() {
        let config = Config {
            enable_annotations: ANNOTATIONS.iter().map(|a| (*a).to_owned()).collect(),
            ..Config::default()
        };
        assert_eq!(
            config.annotated_size(&annotations(&[])).unwrap(),
            AnnotatedSize::default()
        );
        assert_eq!(
            config
                .annotated_size(&annotations(&[
                    (VCPUS_ANNOTATION, "2"),
                    (MEMORY_ANNOTATION, "1024")
                ]))
                .unwrap(),
            AnnotatedSize {
                vcpus: Some(2),
                memory_mib: Some(1024)
            }
        );
        for (key, value) in [
            (VCPUS_ANNOTATION, "0"),
            (VCPUS_ANNOTATION, "99"),
            (VCPUS_ANNOTATION, "lots"),
            (MEMORY_ANNOTATION, "32"),
            (MEMORY_ANNOTATION, "1e9"),
        ] {
            let err = config
                .annotated_size(&annotations(&[(key, value)]))
                .expect_err(value);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }
}
