//! `install.sh` against a scratch host root: installing twice and
//! uninstalling on containerd config versions 2 and 3 and on none, leaving
//! what is not its own, refusing what it cannot patch, the installer image's
//! contents, shellcheck, and its `run` mode's SIGTERM handling.

use super::*;

/// A scratch node: its root, and a payload like the image's.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let node = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for name in BINARIES {
            node.payload_file("bin", name, &format!("#!/bin/sh\necho {name}\n"));
        }
        for name in GUEST_FILES {
            node.payload_file("share", name, &format!("fake {name}\n"));
        }
        std::fs::create_dir_all(node.host("/etc/containerd")).expect("etc");
        node
    }

    fn payload_file(&self, dir: &str, name: &str, text: &str) {
        let path = self.dir.path().join("payload").join(dir).join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("payload dir");
        std::fs::write(path, text).expect("payload file");
    }

    fn host(&self, path: &str) -> PathBuf {
        self.dir
            .path()
            .join("root")
            .join(path.trim_start_matches('/'))
    }

    fn containerd_config(&self) -> PathBuf {
        self.host("/etc/containerd/config.toml")
    }

    fn run(&self, action: &str) -> Output {
        Command::new("bash")
            .arg(deploy("install.sh"))
            .arg(action)
            .env("HOST_ROOT", self.dir.path().join("root"))
            .env("HULL_PAYLOAD", self.dir.path().join("payload"))
            .env("HULL_NO_RESTART", "1")
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("HULL_LINK_DIR")
            .output()
            .expect("bash install.sh")
    }

    fn run_ok(&self, action: &str) -> String {
        let output = self.run(action);
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "install.sh {action}:\n{log}");
        log
    }

    fn assert_installed(&self) {
        for name in BINARIES {
            let installed = self.host(&format!("/opt/hull/bin/{name}"));
            assert_eq!(
                read(&installed),
                format!("#!/bin/sh\necho {name}\n"),
                "{name}"
            );
            let mode = std::fs::metadata(&installed).expect("stat").permissions();
            assert_eq!(mode.mode() & 0o777, 0o755, "{name}");
            let link = self.host(&format!("/usr/local/bin/{name}"));
            assert_eq!(
                std::fs::read_link(&link).expect("link"),
                PathBuf::from(format!("/opt/hull/bin/{name}")),
                "{name}"
            );
        }
        for name in GUEST_FILES {
            assert_eq!(
                read(&self.host(&format!("/opt/hull/share/{name}"))),
                format!("fake {name}\n")
            );
        }
        // The shim's config: the documented one, pointed at /opt/hull.
        let config = Config::parse(&read(&self.host("/etc/hull/config.toml")))
            .expect("installed config.toml parses");
        assert_eq!(
            config,
            Config {
                kernel: "/opt/hull/share/vmlinux".into(),
                initrd: "/opt/hull/share/initramfs.cpio.gz".into(),
                hull_vmm: "/opt/hull/bin/hull-vmm".into(),
                ..Config::default()
            }
        );
        // No temporary file left behind.
        for dir in ["/etc/containerd", "/etc/hull", "/opt/hull/bin"] {
            for entry in std::fs::read_dir(self.host(dir)).expect("read_dir") {
                let name = entry.expect("entry").file_name();
                assert!(
                    !name.to_string_lossy().contains(".hull."),
                    "{dir}/{name:?} left"
                );
            }
        }
    }

    fn assert_uninstalled(&self) {
        assert!(!self.host("/opt/hull").exists(), "/opt/hull is left");
        assert!(!self.host("/etc/hull/config.toml").exists());
        for name in BINARIES {
            let link = self.host(&format!("/usr/local/bin/{name}"));
            assert!(link.symlink_metadata().is_err(), "{name} link is left");
        }
    }
}

/// The containerd config after installing: exactly one hull block, the
/// original text before it, and it parses with the runtime at the path of
/// `version`.
fn assert_one_block(text: &str, original: &str, version: i64) {
    assert_eq!(text.matches(BEGIN_MARKER).count(), 1, "{text}");
    assert_eq!(text.matches(END_MARKER).count(), 1, "{text}");
    assert_eq!(text.matches("runtimes.hull]").count(), 1, "{text}");
    assert_eq!(text.matches("runtimes.hull.options]").count(), 1, "{text}");
    assert!(text.starts_with(original), "{text}");
    let config: toml::Value = toml::from_str(text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(config.get("version"), Some(&toml::Value::from(version)));
    assert_hull_runtime(&config, version);
}

const V2_CONFIG: &str = r#"version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"#;

const V3_CONFIG: &str = r#"version = 3
root = "/var/lib/containerd"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = true
"#;

fn install_twice_then_uninstall(original: &str, version: i64) {
    let node = Node::new();
    std::fs::write(node.containerd_config(), original).expect("config");
    let first = node.run_ok("install");
    assert!(first.contains("hull runtime added"), "{first}");
    node.assert_installed();
    let once = read(&node.containerd_config());
    assert_one_block(&once, original, version);
    if version == 2 {
        containerd_reads(&node.containerd_config());
    }

    let second = node.run_ok("install");
    assert!(second.contains("already as wanted"), "{second}");
    assert_eq!(
        read(&node.containerd_config()),
        once,
        "install is idempotent"
    );
    node.assert_installed();

    node.run_ok("uninstall");
    assert_eq!(read(&node.containerd_config()), original);
    node.assert_uninstalled();
    // Uninstalling again finds nothing to do.
    node.run_ok("uninstall");
    assert_eq!(read(&node.containerd_config()), original);
}

#[test]
fn install_sh_on_a_version_2_config() {
    install_twice_then_uninstall(V2_CONFIG, 2);
}

#[test]
fn install_sh_on_a_version_3_config() {
    install_twice_then_uninstall(V3_CONFIG, 3);
}

#[test]
fn install_sh_on_a_node_without_a_containerd_config() {
    let node = Node::new();
    node.run_ok("install");
    node.run_ok("install");
    node.assert_installed();
    let text = read(&node.containerd_config());
    assert_one_block(&text, "", 2);
    containerd_reads(&node.containerd_config());
    node.run_ok("uninstall");
    assert!(
        !node.containerd_config().exists(),
        "the file it made is gone"
    );
    node.assert_uninstalled();
}

#[test]
fn install_sh_leaves_what_is_not_its_own() {
    let node = Node::new();
    std::fs::write(node.containerd_config(), V2_CONFIG).expect("config");
    // An administrator's config.toml and a host's own virtiofsd.
    let mine = "default_memory_mib = 256\n";
    std::fs::create_dir_all(node.host("/etc/hull")).expect("etc/hull");
    std::fs::write(node.host("/etc/hull/config.toml"), mine).expect("hull config");
    std::fs::create_dir_all(node.host("/usr/local/bin")).expect("bin");
    std::os::unix::fs::symlink(
        "/usr/libexec/virtiofsd",
        node.host("/usr/local/bin/virtiofsd"),
    )
    .expect("symlink");

    let log = node.run_ok("install");
    assert!(
        log.contains("virtiofsd links to /usr/libexec/virtiofsd"),
        "{log}"
    );
    assert_eq!(read(&node.host("/etc/hull/config.toml")), mine);
    node.run_ok("uninstall");
    assert_eq!(read(&node.host("/etc/hull/config.toml")), mine);
    assert_eq!(
        std::fs::read_link(node.host("/usr/local/bin/virtiofsd")).expect("link"),
        PathBuf::from("/usr/libexec/virtiofsd")
    );
    assert!(!node.host("/opt/hull").exists());
    assert_eq!(read(&node.containerd_config()), V2_CONFIG);
}

#[test]
fn install_sh_refuses_configs_it_cannot_patch() {
    for (config, complaint) in [
        (
            "root = \"/var/lib/containerd\"\n".to_owned(),
            "no top-level 'version = 2' or 'version = 3'",
        ),
        ("version = 4\n".to_owned(), "is version 4"),
        (
            format!(
                "{V2_CONFIG}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\n  runtime_type = \"io.containerd.hull.v2\"\n"
            ),
            "already configures a 'hull' runtime",
        ),
        (
            format!("{V2_CONFIG}{BEGIN_MARKER}: managed by hull's install.sh, do not edit\n"),
            "unmatched hull marker comments",
        ),
    ] {
        let node = Node::new();
        std::fs::write(node.containerd_config(), &config).expect("config");
        let output = node.run("install");
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config}");
        assert!(log.contains(complaint), "{config}\n{log}");
        assert_eq!(read(&node.containerd_config()), config, "left as it was");
    }
    // A missing payload file is named before anything is touched.
    let node = Node::new();
    std::fs::remove_file(node.dir.path().join("payload/share/vmlinux")).expect("rm");
    let output = node.run("install");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("share/vmlinux is missing"));
    assert!(!node.host("/opt/hull").exists());
}

#[test]
fn the_image_holds_what_install_sh_installs() {
    // stage.sh from fake build outputs fills the build context.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let target = dir.path().join("target");
    for path in [
        target.join("release/containerd-shim-hull-v2"),
        target.join("release/hull-vmm"),
        cache.join("tools/bin/virtiofsd"),
        cache.join("tools/bin/vhost-device-vsock"),
        cache.join("guest/vmlinux"),
        cache.join("guest/initramfs.cpio.gz"),
    ] {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, "x").expect("file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let context = dir.path().join("context");
    let output = Command::new("bash")
        .arg(deploy("stage.sh"))
        .arg(&context)
        .env("HULL_CACHE", &cache)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("stage.sh");
    assert!(output.status.success(), "{output:?}");

    let dockerfile = read(&deploy("Dockerfile"));
    let copies: Vec<(&str, &str)> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .map(|rest| rest.split_once(' ').expect("COPY source target"))
        .collect();
    for (source, target) in &copies {
        assert!(context.join(source).is_file(), "{source} is not staged");
        assert_eq!(
            target.strip_prefix("/opt/hull-deploy/"),
            Some(*source),
            "the image keeps the context's layout"
        );
    }
    let copied: BTreeSet<&str> = copies.iter().map(|(source, _)| *source).collect();
    for name in BINARIES {
        assert!(
            copied.contains(format!("payload/bin/{name}").as_str()),
            "{name}"
        );
    }
    for name in GUEST_FILES {
        assert!(
            copied.contains(format!("payload/share/{name}").as_str()),
            "{name}"
        );
    }
    for file in [
        "install.sh",
        "config.toml",
        "containerd/config-v2.toml",
        "containerd/config-v3.toml",
    ] {
        assert!(copied.contains(file), "{file} is not in the image");
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"/opt/hull-deploy/install.sh\"]"));
}

#[test]
fn the_scripts_pass_shellcheck() {
    let scripts = [deploy("install.sh"), deploy("stage.sh")];
    for script in &scripts {
        let output = Command::new("bash")
            .arg("-n")
            .arg(script)
            .output()
            .expect("bash -n");
        assert!(output.status.success(), "{output:?}");
    }
    match Command::new("shellcheck").args(&scripts).output() {
        Ok(output) => assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        ),
        Err(_) => eprintln!("shellcheck is not installed: only `bash -n` checked"),
    }
}

/// The DaemonSet's entry point: `run` installs, says it is ready, waits,
/// and uninstalls on SIGTERM when told to.
#[test]
fn install_sh_run_installs_then_uninstalls_on_sigterm() {
    let node = Node::new();
    std::fs::write(node.containerd_config(), V3_CONFIG).expect("config");
    let ready = node.dir.path().join("ready");
    let log_path = node.dir.path().join("run.log");
    let log_file = std::fs::File::create(&log_path).expect("log");
    let child = Command::new("bash")
        .arg(deploy("install.sh"))
        .arg("run")
        .env("HOST_ROOT", node.dir.path().join("root"))
        .env("HULL_PAYLOAD", node.dir.path().join("payload"))
        .env("HULL_NO_RESTART", "1")
        .env("HULL_UNINSTALL_ON_EXIT", "true")
        .env("HULL_READY_FILE", &ready)
        .env_remove("NODE_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("HULL_LINK_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .expect("install.sh run");
    let mut child = KillGroupOnDrop(child);
    let child = &mut child.0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        assert!(child.try_wait().expect("try_wait").is_none(), "run ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    node.assert_installed();
    assert_one_block(&read(&node.containerd_config()), V3_CONFIG, 3);

    let pid = nix::unistd::Pid::from_raw(child.id().try_into().expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let log = read(&log_path);
    assert!(status.success(), "{log}");
    assert!(log.contains("uninstalled"), "{log}");
    assert_eq!(read(&node.containerd_config()), V3_CONFIG);
    node.assert_uninstalled();
}

/// A child in its own process group, all of which is killed if the test
/// fails before it ends (`run` leaves a `sleep` behind otherwise).
struct KillGroupOnDrop(std::process::Child);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let group = nix::unistd::Pid::from_raw(-i32::try_from(self.0.id()).expect("pid"));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}
