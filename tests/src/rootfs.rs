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
    for sub in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "data", "run",
    ] {
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

/// Every regular file that [`add_host_files`] copies for `paths`: each file,
/// each file below each directory, and the shared libraries of each (as
/// `ldd` resolves them), sorted.
pub fn host_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files);
    }
    let mut libraries = Vec::new();
    for file in &files {
        libraries.extend(shared_libraries(file));
    }
    files.extend(libraries);
    files.sort();
    files.dedup();
    files
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    let meta = std::fs::metadata(path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (scripts/install-deps.sh installs it)",
            path.display()
        )
    });
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("read host directory")
            .map(|entry| entry.expect("host directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, files);
        }
    } else {
        files.push(path.to_owned());
    }
}

/// The libraries `ldd` says `file` loads; none for a file that is not a
/// dynamic ELF object.
fn shared_libraries(file: &Path) -> Vec<PathBuf> {
    let Ok(output) = Command::new("ldd").arg(file).output() else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies [`host_files`] of `paths` into the root filesystem at `dir`, each
/// at its own path (the file's content where the host has a symlink).
pub fn add_host_files(dir: &Path, paths: &[PathBuf]) {
    for file in host_files(paths) {
        let target = dir.join(file.strip_prefix("/").expect("absolute host path"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("image directory");
        std::fs::copy(&file, &target)
            .unwrap_or_else(|err| panic!("copying {}: {err}", file.display()));
    }
}
