//! A network namespace of the test's own on a CNI bridge: a peer on the
//! pods' network that is neither a pod nor the host, with busybox to serve
//! and fetch HTTP. Dropping it kills its servers and deletes the namespace,
//! and with it its end of the veth.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug)]
pub struct Peer {
    pub name: String,
    /// Its address on the bridge, without the prefix length.
    pub address: String,
    servers: Vec<Child>,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Peer {
    /// A namespace whose `eth0` is a veth on `bridge` with `cidr`
    /// ("10.254.0.250/24").
    pub fn on_bridge(bridge: &str, cidr: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let suffix = format!(
            "{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("hull-peer-{suffix}");
        // Interface names have at most 15 bytes.
        let host_end = format!("hp{suffix}");
        ip(&["netns", "add", &name]);
        let peer = Self {
            name: name.clone(),
            address: cidr.split('/').next().expect("address").to_owned(),
            servers: Vec::new(),
        };
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["link", "set", &host_end, "master", bridge, "up"]);
        ip(&["-n", &name, "addr", "add", cidr, "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        peer
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, BUSYBOX])
            .args(args);
        command
    }

    /// Serves the files of `dir` over HTTP on `port` until dropped.
    pub fn serve_http(&mut self, dir: &Path, port: u16) {
        let child = self
            .command(&[
                "httpd",
                "-f",
                "-p",
                &port.to_string(),
                "-h",
                &dir.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        self.servers.push(child);
    }

    /// Runs a busybox applet in the namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("busybox in the peer")
    }

    /// `wget -O -` of `url` from the namespace, retried until `timeout`.
    pub fn fetch(&self, url: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.run(&["wget", "-q", "-T", "5", "-O", "-", url]);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the peer could not fetch {url}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
