//! Busybox root filesystems built from Debian's `busybox-static`; nothing is
//! downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

const BUSYBOX: &str = "/bin/busybox";

/// Makes a root filesystem at `dir`: a static busybox with a link for each
/// applet, plus the directories and files containers expect.
pub fn busybox(dir: &Path) -> PathBuf {
    let busybox = Path::new(BUSYBOX);
    assert!(
        busybox.exists(),
        "{BUSYBOX} is missing: the test set-up installs busybox-static"
    );
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"] {
        std::fs::create_dir_all(dir.join(sub)).expect("rootfs directory");
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").expect("group");
    dir.to_owned()
}
