//! The individual facts `hull check` gathers: programs and their versions,
//! the guest kernel and initrd, access to /dev/kvm.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hull_hypervisor::process::{Helper, find_program};
use serde::Serialize;

/// A program wedged on `--version` must not hang the check; under TCG (as
/// in the KVM test host) even QEMU's start-up takes a second or two.
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// Enough to find "Linux version" in any vmlinux without reading a huge
/// file that is not a kernel at all.
const MAX_KERNEL_SCAN: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Program {
    pub program: String,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    pub error: Option<String>,
}

impl Program {
    /// Finds `program` (a name in PATH, or a path) and asks its version.
    pub fn probe(program: &str) -> Self {
        let mut probed = Self {
            program: program.to_owned(),
            path: None,
            version: None,
            error: None,
        };
        match find_program(program) {
            Ok(path) => {
                match version_of(&path) {
                    Ok(version) => probed.version = Some(version),
                    Err(err) => probed.error = Some(err),
                }
                probed.path = Some(path);
            }
            Err(err) => probed.error = Some(err.to_string()),
        }
        probed
    }

    pub fn found(&self) -> bool {
        self.path.is_some()
    }
}

/// The first line `program --version` prints (stdout, else stderr).
fn version_of(program: &Path) -> Result<String, String> {
    let mut helper = Helper::spawn(
        "version",
        Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|err| err.to_string())?;
    // Version banners are far below a pipe's capacity, so waiting before
    // reading cannot deadlock.
    let Some(status) = helper.wait_timeout(VERSION_TIMEOUT) else {
        return Err(format!(
            "`--version` did not finish within {} s",
            VERSION_TIMEOUT.as_secs()
        ));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = helper.child().stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = helper.child().stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let text = [stdout, stderr]
        .iter()
        .find_map(|out| out.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or_default()
        .to_owned();
    match (status.success(), text.is_empty()) {
        (true, false) => Ok(text),
        (true, true) => Err("`--version` printed nothing".to_owned()),
        (false, _) => Err(format!("`--version` failed ({status}): {text}")),
    }
}

/// A guest kernel or initrd file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub present: bool,
    pub resolved: Option<PathBuf>,
    pub size: Option<u64>,
    pub release: Option<String>,
}

impl Artifact {
    pub fn probe(path: &Path, is_kernel: bool) -> Self {
        let metadata = std::fs::metadata(path).ok().filter(|m| m.is_file());
        let resolved = metadata
            .as_ref()
            .and_then(|_| std::fs::canonicalize(path).ok());
        let release = match (&resolved, is_kernel) {
            (Some(resolved), true) => kernel_release(resolved),
            _ => None,
        };
        Self {
            path: path.to_owned(),
            present: metadata.is_some(),
            resolved,
            size: metadata.map(|m| m.len()),
            release,
        }
    }
}

/// The kernel's release: guest-image/build.sh leaves a `release` file next
/// to the vmlinux it builds, which is exact and cheap; any other kernel says
/// it in its own bytes.
pub fn kernel_release(kernel: &Path) -> Option<String> {
    if let Some(release) = kernel
        .parent()
        .and_then(|dir| std::fs::read_to_string(dir.join("release")).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
    {
        return Some(release);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(kernel)
        .ok()?
        .take(MAX_KERNEL_SCAN)
        .read_to_end(&mut bytes)
        .ok()?;
    release_in_bytes(&bytes)
}

/// A bzImage's real-mode header points at its version string (the rest is
/// compressed); a vmlinux has the uncompressed `linux_banner`.
fn release_in_bytes(bytes: &[u8]) -> Option<String> {
    // Offsets from Documentation/x86/boot.rst: "HdrS" at 0x202, and the
    // version string's offset minus 0x200 at 0x20e.
    if bytes.get(0x202..0x206) == Some(b"HdrS") {
        let offset = u16::from_le_bytes([*bytes.get(0x20e)?, *bytes.get(0x20f)?]) as usize + 0x200;
        if let Some(release) = bytes.get(offset..).and_then(first_word) {
            return Some(release);
        }
    }
    const BANNER: &[u8] = b"Linux version ";
    let start = bytes
        .windows(BANNER.len())
        .position(|window| window == BANNER)?
        + BANNER.len();
    first_word(&bytes[start..])
}

fn first_word(bytes: &[u8]) -> Option<String> {
    let word: Vec<u8> = bytes
        .iter()
        .take(128)
        .copied()
        .take_while(|b| b.is_ascii_graphic())
        .collect();
    (!word.is_empty()).then(|| String::from_utf8_lossy(&word).into_owned())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DevKvm {
    pub exists: bool,
    /// Opened read-write, as a VMM must.
    pub accessible: bool,
    pub error: Option<String>,
}

impl DevKvm {
    pub fn probe_at(path: &Path) -> Self {
        let exists = path.exists();
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path);
        Self {
            exists,
            accessible: opened.is_ok(),
            error: opened.err().filter(|_| exists).map(|err| err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_file_next_to_the_kernel_wins() {
        let dir = tempfile::tempdir().expect("dir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"junk Linux version 1.2.3 (x)").expect("kernel");
        assert_eq!(kernel_release(&kernel).as_deref(), Some("1.2.3"));
        std::fs::write(dir.path().join("release"), "6.1.192\n").expect("release");
        assert_eq!(kernel_release(&kernel).as_deref(), Some("6.1.192"));
    }

    #[test]
    fn a_bzimage_header_names_its_release() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let version = b"6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1\0";
        image[0x500..0x500 + version.len()].copy_from_slice(version);
        assert_eq!(
            release_in_bytes(&image).as_deref(),
            Some("6.1.0-28-cloud-amd64")
        );
        assert_eq!(release_in_bytes(b"no banner here"), None);
    }

    #[test]
    fn a_missing_program_says_so() {
        let program = Program::probe("/nonexistent/qemu");
        assert!(!program.found());
        assert!(
            program
                .error
                .as_deref()
                .is_some_and(|e| e.contains("does not exist")),
            "{program:?}"
        );
    }

    #[test]
    fn a_program_version_is_its_first_line() {
        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("tool");
        std::fs::write(&script, "#!/bin/sh\necho\necho 'tool 1.0'\necho more\n").expect("tool");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let program = Program::probe(script.to_str().expect("utf-8"));
        assert_eq!(program.version.as_deref(), Some("tool 1.0"), "{program:?}");
    }

    #[test]
    fn a_missing_dev_kvm_has_no_error_to_report() {
        let missing = DevKvm::probe_at(Path::new("/nonexistent/kvm"));
        assert_eq!(
            missing,
            DevKvm {
                exists: false,
                accessible: false,
                error: None
            }
        );
    }
}
