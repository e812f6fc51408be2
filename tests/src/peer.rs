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
    /// The veth's end on the bridge, in the host's namespace.
    host_end: String,
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
            host_end: host_end.clone(),
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

    /// One HTTP/1.0 GET of `path` from `address:port`, made from the
    /// namespace with busybox nc (busybox's static wget crashes in NSS):
    /// the body, or why there is none.
    pub fn http_get(&self, address: &str, port: u16, path: &str) -> Result<Vec<u8>, String> {
        use std::io::Write;
        let mut child = self
            .command(&["nc", "-w", "30", address, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("busybox nc: {err}"))?;
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(request.as_bytes())
                .map_err(|err| format!("writing the request: {err}"))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| format!("busybox nc: {err}"))?;
        let response = output.stdout;
        let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "no HTTP response ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        };
        let status = String::from_utf8_lossy(&response[..split]);
        if !status.starts_with("HTTP/1.") || !status.contains(" 200 ") {
            return Err(status.lines().next().unwrap_or_default().to_owned());
        }
        Ok(response[split + 4..].to_vec())
    }

    /// The body of `http_get` as text, retried until `timeout`.
    pub fn fetch(&self, address: &str, port: u16, path: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.http_get(address, port, path) {
                Ok(body) => return String::from_utf8_lossy(&body).into_owned(),
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "the peer could not fetch http://{address}:{port}{path}: {err}"
                ),
            }
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
        // Deleting the veth is synchronous; a namespace's interfaces go in
        // the background after `netns del`.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
