//! The KVM test host harness works: a command runs in it, /dev/kvm there has
//! nested paging, and a KVM guest boots Linux inside it.

use std::time::Duration;

use hull_tests::kvm_host;

#[test]
fn the_kvm_test_host_runs_a_command_with_working_kvm() {
    let script = r#"
uname -r
test -c /dev/kvm && echo dev-kvm
grep -qw svm /proc/cpuinfo && echo svm-flag
dmesg | grep -o 'Nested Paging enabled' | head -n 1
test -x /usr/bin/qemu-system-x86_64 && echo host-root-visible
echo written > /tmp/overlay-write && cat /tmp/overlay-write
exit 3
"#;
    let outcome = kvm_host::run(script, 2048, Duration::from_secs(300));
    assert_eq!(outcome.exit_code, 3, "console:\n{}", outcome.console);
    let lines: Vec<&str> = outcome.output.lines().collect();
    assert!(lines[0].ends_with("-cloud-amd64"), "{lines:?}");
    for expected in [
        "dev-kvm",
        "svm-flag",
        "Nested Paging enabled",
        "host-root-visible",
        "written",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected} missing from {lines:?}"
        );
    }
}

#[test]
fn a_kvm_guest_boots_the_hull_guest_image_inside() {
    let (kernel, initrd) = hull_tests::vm::guest_image();
    // QEMU with -accel kvm inside the test host; the agent's first log line
    // shows that the guest kernel booted and ran /init. QEMU is stopped as
    // soon as that line is seen.
    let script = format!(
        r#"
qemu-system-x86_64 -accel kvm -cpu host -machine microvm,pit=on -m 256M \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -append "console=ttyS0 reboot=t panic=-1" -kernel {kernel} -initrd {initrd} > /tmp/inner.log 2>&1 &
qemu=$!
for i in $(seq 1 600); do
  grep -q 'serving on vsock' /tmp/inner.log && break
  sleep 0.2
done
kill $qemu
grep -o 'serving on vsock' /tmp/inner.log || {{ tail -n 20 /tmp/inner.log; exit 1; }}
"#,
        kernel = kernel.display(),
        initrd = initrd.display()
    );
    let outcome = kvm_host::run(&script, 2048, Duration::from_secs(400));
    assert_eq!(outcome.exit_code, 0, "output:\n{}", outcome.output);
    assert!(outcome.output.contains("serving on vsock"));
}

#[test]
fn hull_vmm_boots_the_guest_image_to_the_agent() {
    let (kernel, initrd) = hull_tests::vm::guest_image();
    let vmm = hull_tests::workspace_binary("hull-vmm");
    // hull-vmm under the test host's KVM: the agent's first log line shows
    // that the kernel booted, ran /init and left the initramfs.
    let script = format!(
        r#"
start=$(date +%s%N)
{vmm} --kernel {kernel} --initrd {initrd} --vcpus 2 --console-log /tmp/console.log 2>/tmp/vmm.log &
vmm=$!
for i in $(seq 1 900); do
  grep -q 'serving on vsock' /tmp/console.log 2>/dev/null && break
  kill -0 $vmm 2>/dev/null || break
  sleep 0.2
done
echo "agent line after $(( ($(date +%s%N) - start) / 1000000 )) ms"
kill $vmm 2>/dev/null
grep -o 'serving on vsock' /tmp/console.log || {{ cat /tmp/vmm.log; tail -n 30 /tmp/console.log; exit 1; }}
# The MP table brought up the second vCPU.
grep -o 'smp: Brought up 1 node, 2 CPUs' /tmp/console.log || grep -i 'smp\|cpu' /tmp/console.log

# A guest that resets ends the VM: with no init the kernel panics, and
# panic=-1 with reboot=k resets through the keyboard controller at once.
timeout 300 {vmm} --kernel {kernel} --console-log /tmp/panic.log \
  --cmdline "console=ttyS0 reboot=k panic=-1 pci=off rdinit=/none init=/none"
echo "reset exit $?"
grep -o 'Kernel panic' /tmp/panic.log | head -n 1
"#,
        vmm = vmm.display(),
        kernel = kernel.display(),
        initrd = initrd.display()
    );
    let outcome = kvm_host::run(&script, 2048, Duration::from_secs(400));
    println!("{}", outcome.output);
    assert_eq!(outcome.exit_code, 0, "output:\n{}", outcome.output);
    assert!(outcome.output.contains("serving on vsock"));
    assert!(
        outcome.output.contains("smp: Brought up 1 node, 2 CPUs"),
        "{}",
        outcome.output
    );
    // hull-vmm ended by itself, successfully, when the guest reset.
    assert!(
        outcome.output.contains("reset exit 0"),
        "{}",
        outcome.output
    );
    assert!(
        outcome.output.contains("Kernel panic"),
        "{}",
        outcome.output
    );
}
