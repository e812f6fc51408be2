//! The device driven as a driver would (registers through the MMIO
//! transport, real split virtqueues in guest memory) against a real tap.
//! Each test runs on a thread of its own that has left for a private
//! network namespace, so its tap and everything on it vanish with it. The
//! host side of the tap is a packet socket bound to it, for one EtherType.
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).

mod driver;
mod host;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::frame::HEADER_LEN;
use super::*;
use crate::devices::BusDevice;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::test_driver::{WAIT, read_reg, reg};
use driver::Driver;
use host::{BROADCAST, MAC, MTU, Wire, check, create_tap, frame, in_netns};

/// Where big test buffers go, beyond the rings' 4 KiB slots.
const BIG: u64 = 0x10_0000;

#[test]
fn a_frame_the_guest_sends_comes_out_of_the_tap_byte_exact() {
    in_netns(|| {
        let mut driver = Driver::ready(0);
        let wire = Wire::open();
        let sent = frame(BROADCAST, MAC, b"guest to host", 600);
        // Header alone, then the frame in two pieces.
        let head = driver.send([0; HEADER_LEN], &sent, &[HEADER_LEN, 100, 0]);
        assert_eq!(driver.used(1), (head, 0));
        assert_eq!(wire.recv(WAIT).as_deref(), Some(&sent[..]));

        // Header and frame in one descriptor, the header asking for a
        // segmentation offload nobody negotiated: the tap gets it plain.
        let sent = frame(BROADCAST, MAC, b"second", 1514);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&[1, 1, 14, 0, 100, 0, 14, 0]);
        let head = driver.send(header, &sent, &[usize::MAX]);
        assert_eq!(driver.used(1), (head, 0));
        assert_eq!(wire.recv(WAIT).as_deref(), Some(&sent[..]));
        assert_ne!(
            read_reg(&mut driver.transport, 0x060) & Interrupt::USED_RING,
            0
        );
    });
}

#[test]
fn a_frame_from_the_host_arrives_behind_a_zero_header() {
    in_netns(|| {
        let mut driver = Driver::ready(0);
        let wire = Wire::open();
        let sent = frame(MAC, [0x02, 0, 0, 0, 0, 0x99], b"host to guest", 1000);
        wire.send(&sent);
        assert_eq!(driver.recv(), sent);

        // A buffer split over descriptors, the header across two of them.
        driver.post_rx(&[5, 1600]);
        let sent = frame(MAC, [0x02, 0, 0, 0, 0, 0x99], b"split", 1514);
        for _ in 0..5 {
            wire.send(&sent);
        }
        let mut got = 0;
        while got < 5 {
            assert_eq!(driver.recv(), sent);
            got += 1;
        }
    });
}

#[test]
fn malformed_tx_chains_are_refused_and_a_good_frame_passes_after() {
    in_netns(|| {
        let mut driver = Driver::ready(0);
        let wire = Wire::open();
        let bad = frame(BROADCAST, MAC, b"must not pass", 200);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&bad);
        let at = driver.tx.buffer(0);
        driver
            .memory
            .write_slice(&bytes, GuestAddress(at))
            .expect("frame");
        let len = bytes.len() as u32;
        // Device-writable on the tx queue.
        let wrong_direction = driver.offer(1, &[(at, len, true)]);
        // Beyond the 2 MiB of guest memory.
        let outside = driver.offer(1, &[(0x4000_0000, len, false)]);
        // Part of the header only.
        let short = driver.offer(1, &[(at, 8, false)]);
        // A header and less than an Ethernet header.
        let runt = driver.offer(1, &[(at, HEADER_LEN as u32 + 10, false)]);
        // A frame of 65551 bytes.
        let big = vec![0u8; HEADER_LEN + frame::MAX_FRAME + 1];
        driver
            .memory
            .write_slice(&big, GuestAddress(BIG))
            .expect("big");
        driver
            .memory
            .write_slice(&bytes, GuestAddress(BIG))
            .expect("big frame");
        let oversize = driver.offer(1, &[(BIG, big.len() as u32, false)]);
        for head in [wrong_direction, outside, short, runt, oversize] {
            assert_eq!(driver.used(1), (head, 0));
        }
        let good = frame(BROADCAST, MAC, b"good", 64);
        let head = driver.send([0; HEADER_LEN], &good, &[usize::MAX]);
        assert_eq!(driver.used(1), (head, 0));
        assert_eq!(wire.recv(WAIT).as_deref(), Some(&good[..]));
        assert_eq!(wire.recv(Duration::from_millis(200)), None);

        // The largest frame allowed does pass.
        let largest = frame(BROADCAST, MAC, b"largest", frame::MAX_FRAME);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&largest);
        driver
            .memory
            .write_slice(&bytes, GuestAddress(BIG))
            .expect("largest");
        let head = driver.offer(1, &[(BIG, bytes.len() as u32, false)]);
        assert_eq!(driver.used(1), (head, 0));
        // The tap's MTU is 1500; the kernel still hands the frame to the
        // packet socket, which is what shows the device wrote it whole.
        assert_eq!(wire.recv(WAIT).map(|f| f.len()), Some(largest.len()));
    });
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_a_good_buffer_is_filled() {
    in_netns(|| {
        let (mut driver, _tap) = Driver::new(0);
        driver.activate();
        let wire = Wire::open();
        let at = driver.rx.buffer(0);
        let wrong_direction = driver.offer(0, &[(at, 4096, false)]);
        let outside = driver.offer(0, &[(0x4000_0000, 4096, true)]);
        let short = driver.offer(0, &[(at, 10, true)]);
        // Room for the header and a frame, but not one of the MTU.
        let small = driver.offer(0, &[(at, HEADER_LEN as u32 + 1000, true)]);
        for head in [wrong_direction, outside, short, small] {
            assert_eq!(driver.used(0), (head, 0));
        }
        driver.post_rx(&[4096]);
        let sent = frame(MAC, BROADCAST, b"after the bad ones", 90);
        wire.send(&sent);
        assert_eq!(driver.recv(), sent);
    });
}

/// utime + stime of the thread called `name`, in clock ticks.
fn cpu_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let task = task.expect("task").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
            let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split(' ').collect();
            // utime and stime are fields 14 and 15; the split starts at 3.
            return fields[11].parse::<u64>().expect("utime")
                + fields[12].parse::<u64>().expect("stime");
        }
    }
    panic!("no thread {name}");
}

#[test]
fn without_rx_buffers_the_tap_is_left_alone_until_the_guest_posts_some() {
    in_netns(|| {
        // Index 7: no other test's device thread has this name.
        let (mut driver, _tap) = Driver::new(7);
        driver.activate();
        let wire = Wire::open();
        // One buffer, posted while the tap is empty so the device watches
        // the tap for it, then used up: the tap is watched no more.
        driver.post_rx(&[4096]);
        std::thread::sleep(Duration::from_millis(100));
        let sent = frame(MAC, BROADCAST, b"waiting", 300);
        wire.send(&sent);
        assert_eq!(driver.recv_one(), sent);
        wire.send(&sent);
        std::thread::sleep(Duration::from_millis(50));
        let before = cpu_ticks("hull-net7");
        std::thread::sleep(Duration::from_millis(500));
        let spent = cpu_ticks("hull-net7") - before;
        assert!(spent <= 5, "the device thread spun for {spent} ticks");
        driver.post_rx(&[4096]);
        assert_eq!(driver.recv(), sent, "the frame waited in the tap");
    });
}

#[test]
fn after_a_reset_the_device_serves_again() {
    in_netns(|| {
        let mut driver = Driver::ready(0);
        let wire = Wire::open();
        let first = frame(BROADCAST, MAC, b"before", 100);
        driver.send([0; HEADER_LEN], &first, &[usize::MAX]);
        assert_eq!(wire.recv(WAIT).as_deref(), Some(&first[..]));
        driver.activate();
        driver.post_rx(&[4096]);
        let again = frame(BROADCAST, MAC, b"after", 100);
        driver.send([0; HEADER_LEN], &again, &[usize::MAX]);
        assert_eq!(wire.recv(WAIT).as_deref(), Some(&again[..]));
        let back = frame(MAC, BROADCAST, b"back", 100);
        wire.send(&back);
        assert_eq!(driver.recv(), back);
    });
}

#[test]
fn registers_config_space_and_features() {
    in_netns(|| {
        let (mut driver, tap) = Driver::new(0);
        let t = &mut driver.transport;
        assert_eq!(read_reg(t, 0x008), VIRTIO_ID_NET);
        for queue in 0..2 {
            reg(t, 0x030, queue);
            assert_eq!(read_reg(t, 0x034), 256);
        }
        reg(t, 0x030, 2);
        assert_eq!(read_reg(t, 0x034), 0, "no control queue");
        reg(t, 0x014, 0);
        assert_eq!(
            read_reg(t, 0x010),
            1 << 3 | 1 << 5 | 1 << 16,
            "MTU, MAC, STATUS"
        );
        reg(t, 0x014, 1);
        assert_eq!(read_reg(t, 0x010), 1, "VIRTIO_F_VERSION_1");
        let mut config = [0u8; 12];
        for (i, byte) in config.iter_mut().enumerate() {
            let mut data = [0u8];
            t.read(0x100 + i as u64, &mut data);
            *byte = data[0];
        }
        assert_eq!(config[..6], MAC);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "LINK_UP");
        assert_eq!(u16::from_le_bytes([config[8], config[9]]), 1, "one pair");
        assert_eq!(u16::from_le_bytes([config[10], config[11]]), MTU);
        let mut data = [0u8; 4];
        t.read(0x104, &mut data);
        assert_eq!(data, [0, 0x01, 1, 0], "the MAC's tail and the status");
        t.read(0x10c, &mut data);
        assert_eq!(data, [0; 4], "past the end reads zeros");

        // What the device did to the tap, seen through the caller's copy.
        let mut header_len: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int.
        check("TUNGETVNETHDRSZ", unsafe {
            libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut header_len)
        });
        assert_eq!(header_len, 12);
        let status =
            nix::fcntl::fcntl(tap.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("flags");
        assert_ne!(status & libc::O_NONBLOCK, 0, "O_NONBLOCK");
    });
}

fn net_error(fd: RawFd, mac: [u8; 6], mtu: u16) -> String {
    Net::new(
        3,
        &NetConfig {
            tap_fd: fd,
            mac,
            mtu,
        },
    )
    .expect_err("refused")
    .to_string()
}

#[test]
fn construction_names_the_bad_field() {
    in_netns(|| {
        let tap = create_tap(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let fd = tap.as_raw_fd();
        assert_eq!(
            net_error(fd, [1, 0, 0, 0, 0, 1], MTU),
            "net[3].mac: 01:00:00:00:00:01 is a multicast address"
        );
        assert_eq!(
            net_error(fd, [0; 6], MTU),
            "net[3].mac: 00:00:00:00:00:00 is all zeros"
        );
        assert_eq!(net_error(fd, MAC, 67), "net[3].mtu: 67 is below 68");
        // Far above any fd this process has (a closed one's number could be
        // taken by another test's thread at any moment).
        assert_eq!(
            net_error(1 << 30, MAC, MTU),
            "net[3].tap_fd 1073741824: not an open file descriptor"
        );
        let eventfd = EventFd::new(0).expect("eventfd");
        let err = net_error(eventfd.as_raw_fd(), MAC, MTU);
        assert!(err.ends_with(": not a tap (TUNGETIFF refused it)"), "{err}");
        // SAFETY: a plain open(2) of a path literal; the fd is owned after.
        let unattached = unsafe {
            OwnedFd::from_raw_fd(check(
                "open",
                libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
            ))
        };
        let err = net_error(unattached.as_raw_fd(), MAC, MTU);
        assert!(
            err.ends_with("a tun fd not attached to any interface"),
            "{err}"
        );
    });
    for flags in [
        libc::IFF_TAP | libc::IFF_NO_PI,
        libc::IFF_TAP | libc::IFF_VNET_HDR,
        libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    ] {
        let err = in_netns(move || net_error(create_tap(flags).as_raw_fd(), MAC, MTU));
        assert!(
            err.starts_with("net[3].tap_fd ")
                && err.contains("a tap needs IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"),
            "{flags:#x}: {err}"
        );
    }
}
