//! What runs on which kernel (the README's kernel table): the build of the programs the agent
//! loads, the features `check` says are missing, and the bounded-loop build's refusal of a
//! policy. `cargo xtask test` runs these on the machine's kernel and in every VM of the matrix.

use std::fs;

use aya::util::KernelVersion;
use flowlog_agent::{
    datapath::{Datapath, DatapathConfig, DatapathError, ProgramSet},
    policy::Policy,
};
use tests::{
    agent::agent_command,
    netns::NetNs,
    test_run::{Counts, Program, TestDatapath, v4, v4_key},
};

fn kernel_at_least(major: u8, minor: u8) -> bool {
    KernelVersion::current().expect("kernel version") >= KernelVersion::new(major, minor, 0)
}

/// The policy needs `bpf_loop` (5.17) and a verifier that tracks precision through its
/// callbacks (6.5); every kernel from 5.10 counts.
#[test]
fn every_program_of_the_build_this_kernel_calls_for_loads() {
    let datapath = Datapath::load(DatapathConfig { max_flows: 64 }).expect("loading");
    let expected = if kernel_at_least(6, 5) {
        ProgramSet::HelperLoops
    } else {
        ProgramSet::BoundedLoops
    };
    assert_eq!(datapath.programs(), expected);
}

#[test]
fn the_bounded_loop_build_counts_exactly_and_refuses_a_policy() {
    let config = DatapathConfig { max_flows: 64 };
    let mut datapath = Datapath::load_programs(config, ProgramSet::BoundedLoops).expect("loading");
    let path = std::env::temp_dir().join(format!("flowlog-bounded-{}.toml", std::process::id()));
    fs::write(&path, "mode = \"enforce\"\n[acl]\ndefault = \"deny\"\n").expect("policy file");
    let policy = Policy::load(&path).expect("a valid policy");
    let _ = fs::remove_file(&path);
    match datapath.set_policy(Some(&policy.compile(1000))) {
        Err(DatapathError::PolicyUnsupported { .. }) => {}
        other => panic!("expected the policy to be refused, got {other:?}"),
    }
    drop(datapath);

    // The same build through BPF_PROG_TEST_RUN: one UDP packet on each hook, counted once.
    let mut datapath = TestDatapath::load_programs(64, ProgramSet::BoundedLoops);
    let frame = v4().udp(4000, 53).payload(18).build();
    for hook in Program::ALL {
        datapath.send(hook, &frame.bytes, 3);
        let (key, counts) = datapath.drain_one_flow();
        assert_eq!(key, v4_key(hook, 17, 4000, 53));
        assert_eq!(counts, Counts::new(3, 3 * u64::from(frame.ip_len), 0));
    }
}

/// `check` names every feature this kernel lacks, with why, fails a configured policy where
/// the kernel cannot enforce it, and says whether the kernel's own drops can be recorded.
#[test]
fn check_names_every_feature_this_kernel_lacks() {
    let ns = NetNs::new().expect("netns");
    let policy = std::env::temp_dir().join(format!("flowlog-check-{}.toml", std::process::id()));
    fs::write(&policy, "mode = \"audit\"\n[acl]\ndefault = \"allow\"\n").expect("policy file");
    let output = agent_command(&ns, &[])
        .args(["check", "--sink", "stdout", "--no-pin", "--policy"])
        .arg(&policy)
        .env("NO_COLOR", "1")
        .output()
        .expect("spawn the agent");
    let _ = fs::remove_file(&policy);
    let out = String::from_utf8_lossy(&output.stdout);
    let policy_ok = kernel_at_least(6, 5);
    let expected = [
        (
            !policy_ok,
            "FAIL  feature policy: unavailable: its rule lookups need ",
        ),
        (!kernel_at_least(6, 6), "warn  feature TCX: unavailable: "),
        (
            !kernel_at_least(6, 3),
            "warn  feature XDP query: unavailable: ",
        ),
    ];
    for (missing, line) in expected {
        assert_eq!(out.contains(line), missing, "{line:?} in:\n{out}");
    }
    let none_missing = expected.iter().all(|(missing, _)| !missing);
    assert_eq!(
        out.contains("ok    features: every feature is available"),
        none_missing,
        "{out}"
    );
    assert_eq!(output.status.success(), policy_ok, "{out}");
    assert!(
        out.contains("ok    programs: the kernel verified and loaded every program"),
        "{out}"
    );
    // The kernel's own drops (`--kernel-drops refused`, the default) need drop reasons (5.17);
    // where the kernel has them, "programs" above verified the drop program too.
    let drops_line = if kernel_at_least(5, 17) {
        "ok    kernel drops: --kernel-drops refused: the kernel names its drops ("
    } else {
        "warn  kernel drops: kernel drops are unavailable: this kernel has no drop reasons"
    };
    assert_eq!(out.matches("kernel drops: ").count(), 1, "{out}");
    assert!(out.contains(drops_line), "{drops_line:?} in:\n{out}");
}
