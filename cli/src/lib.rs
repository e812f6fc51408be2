//! `hull`, the operator's tool: `hull check` says whether Hull can run pods
//! on this machine and with which backend, `hull image build` builds the
//! guest kernel and initramfs, `hull version` prints the version.
//!
//! # `hull check --json`
//!
//! One JSON object; paths are strings, absent values `null`:
//!
//! ```text
//! {
//!   "version": "0.1.0",                    // hull's version
//!   "config": {
//!     "path": "/etc/hull/config.toml",     // --config, else $HULL_CONFIG, else the default
//!     "exists": bool,                      // a missing default file means the defaults
//!     "loaded": true,                      // false: the file is bad, the defaults were used
//!     "error": null                        // why it could not be loaded
//!   },
//!   "cpu_flag": "svm" | "vmx" | null,      // from /proc/cpuinfo
//!   "dev_kvm": { "exists": bool, "accessible": bool, "error": string | null },
//!   "kvm_modules": ["kvm", "kvm_amd", ...],// of kvm, kvm_intel, kvm_amd, kvm_pvm
//!   "hardware_kvm": bool,                  // /dev/kvm can run a normal guest (PVM cannot)
//!   "programs": {                          // keys: qemu, virtiofsd, vhost_device_vsock, hull_vmm
//!     "qemu": {
//!       "program": "qemu-system-x86_64",   // as configured: a name looked up in PATH, or a path
//!       "path": string | null,             // where it was found
//!       "version": string | null,          // first line of `--version`
//!       "error": string | null             // why it was not found or gave no version
//!     }, ...
//!   },
//!   "kernel": {
//!     "path": string,                      // as configured
//!     "present": bool,
//!     "resolved": string | null,           // symlinks resolved
//!     "size": number | null,               // bytes
//!     "release": string | null             // e.g. "6.1.192"
//!   },
//!   "initrd": { same fields; "release" is always null },
//!   "checks": [                            // what the human table shows, in order
//!     { "name": string, "status": "ok" | "warn" | "fail", "detail": string }, ...
//!   ],
//!   "verdict": {
//!     "can_run": bool,                     // the process exits 0 exactly when true
//!     "requested": "auto" | "hull" | "qemu", // the config's backend
//!     "backend": "hull" | "qemu" | null,   // what the request resolves to here
//!     "accel": "kvm" | "tcg" | null,
//!     "reason": string,                    // why that backend (or why none)
//!     "problems": [string, ...]            // what stops Hull; empty when can_run
//!   }
//! }
//! ```

pub mod check;
pub mod image;

/// Hull's version, with the commit when the build was given one in
/// `$HULL_GIT_COMMIT` (the release build does; a plain `cargo build` need not).
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let version = env!("CARGO_PKG_VERSION");
        match option_env!("HULL_GIT_COMMIT") {
            Some(commit) if !commit.is_empty() => format!("{version} ({commit})"),
            _ => version.to_owned(),
        }
    });
    &VERSION
}
