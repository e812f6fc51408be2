//! The statically linked agent, the one that goes into the initramfs, runs
//! containers on its own: no dynamic loader, no shared libraries.

use hull_tests::agent::{AgentUnderTest, TestAgent};
use hull_tests::static_agent;

/// Whether an ELF executable asks for a program interpreter (ld.so).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let program_headers = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("e_phoff")) as usize;
    let entry_size = u16_at(0x36);
    let count = u16_at(0x38);
    (0..count).any(|index| {
        let at = program_headers + index * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("p_type")) == PT_INTERP
    })
}

#[tokio::test]
async fn the_static_agent_needs_no_loader_and_runs_a_container() {
    let binary = static_agent();
    let elf = std::fs::read(&binary).expect("read the static agent");
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked",
        binary.display()
    );
    let dynamic = std::fs::read(hull_tests::workspace_binary("hull-agent")).expect("read");
    assert!(
        has_interpreter(&dynamic),
        "the ELF check cannot tell the builds apart"
    );

    let mut agent = TestAgent::start_binary(&binary).await;
    let hello = agent.run(&["echo", "static"]).await;
    assert_eq!(
        hello.stdout_text(),
        "static\n",
        "agent log:\n{}",
        agent.log()
    );
}
