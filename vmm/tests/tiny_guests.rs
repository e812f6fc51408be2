//! Tiny freestanding guests under the host's real /dev/kvm. On this
//! project's machines that is PVM, which emulates a plain guest instruction
//! by instruction: plenty for a program of a few hundred instructions, and a
//! real KVM exit path for every port and MMIO access. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use hull_vmm::{Boot, VcpuExitReason, VmmConfig};

/// Where the tiny guests are linked and started: above the real-mode IVT
/// and BIOS data area.
const ENTRY: u16 = 0x1000;

/// Assembles `tests/guests/<name>.S` into a flat real-mode image with the
/// host's binutils.
fn assemble(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(format!("{name}.S"));
    let object = dir.join(format!("{name}.o"));
    let image = dir.join(format!("{name}.bin"));
    let run = |command: &mut Command| {
        let output = command.output().expect("run the assembler");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("gcc")
        .args(["-m32", "-c", "-o"])
        .arg(&object)
        .arg(&source));
    run(Command::new("ld")
        .args(["-m", "elf_i386", "--oformat", "binary"])
        .arg(format!("-Ttext={ENTRY:#x}"))
        .arg("-o")
        .arg(&image)
        .arg(&object));
    image
}

fn run_guest(name: &str) -> (VcpuExitReason, String) {
    let dir = tempfile::tempdir().expect("dir");
    let image = assemble(name, dir.path());
    let console_log = dir.path().join("console.log");
    let exit = hull_vmm::run(&VmmConfig::new(
        16,
        Boot::RealMode {
            image,
            entry: ENTRY,
        },
        console_log.clone(),
    ))
    .expect("run the guest");
    (
        exit,
        std::fs::read_to_string(console_log).expect("console log"),
    )
}

#[test]
fn serial_output_reaches_the_console_log() {
    let (exit, console) = run_guest("serial_hello");
    assert_eq!(exit, VcpuExitReason::Halted);
    assert_eq!(console, "Hello from a tiny guest\n");
}

#[test]
fn a_missing_image_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let err = hull_vmm::run(&VmmConfig::new(
        16,
        Boot::RealMode {
            image: dir.path().join("absent.bin"),
            entry: ENTRY,
        },
        dir.path().join("console.log"),
    ))
    .expect_err("no image")
    .to_string();
    assert!(err.starts_with("boot.image "), "{err}");
}

#[test]
fn virtio_rng_registers_read_through_mmio() {
    let (exit, console) = run_guest("virtio_registers");
    assert_eq!(exit, VcpuExitReason::Halted, "console: {console}");
    // "virt", version 2, device 4 (rng), vendor "HULL", a 256-entry queue.
    assert_eq!(console, "74726976 00000002 00000004 4c554c48 00000100 \n");
}

#[test]
fn a_keyboard_controller_reset_ends_the_vm() {
    let (exit, _) = run_guest("reset");
    assert_eq!(exit, VcpuExitReason::Shutdown);
}
