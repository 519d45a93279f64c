//! CloudWatch Logs delivery against a real CloudWatch Logs API: moto's standalone server on the
//! loopback of the test namespace (as strict as CloudWatch on PutLogEvents' limits, and able
//! to refuse calls as throttled or unavailable), read back with boto3. Every event must be a
//! line the `dir:` sink wrote, byte for byte, in the stream of its interface, with the record's
//! start as its timestamp; the traffic must add up exactly; outages, a server that stops
//! answering and a killed agent must lose and duplicate nothing, within bounded time.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tests::{
    agent::{Agent, AgentBuilder, agent_command, output_within},
    cloudwatch::{self, CloudWatchServer, agent_env},
    records::parse_lines,
    topology::{Expected, TcpRound, Topology},
};

const ACCOUNT: &str = "123456789010";
/// Every character a log group name may hold besides letters and digits.
const GROUP: &str = "/flowlog/vpc.flow-logs#test_1";
const PORT: u16 = 9010;
/// Given to the agent in its environment; must never appear in what it prints.
const SECRET: &str = "flowlog-test-secret";
/// PutLogEvents' limits.
const MAX_EVENTS: usize = 10_000;
const MAX_BYTES: usize = 1_048_576;

/// The TCP part of this file's traffic rounds.
const TCP_ROUND: TcpRound = TcpRound {
    port: 6100,
    client_bytes: 40_000,
    server_bytes: 10_000,
};

fn send_round(topology: &Topology, round: u64, expected: &mut Expected) {
    topology.send_round(round, &TCP_ROUND, expected);
}

fn send_rounds(
    topology: &Topology,
    rounds: std::ops::Range<u64>,
    pause: Duration,
    expected: &mut Expected,
) {
    topology.send_rounds(rounds, pause, &TCP_ROUND, expected);
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/flowlog-cloudwatch-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `run` flags: a0 and a1 every `interval` to the `dir:` sink in `dir` and to [`GROUP`].
fn agent_args(interval: &str, dir: &Path, spool: &Path) -> Vec<String> {
    [
        "--interval",
        interval,
        "--interface",
        "a0",
        "--interface",
        "a1",
        "--sink",
        &format!("dir:{}", dir.display()),
        "--sink",
        &format!("cloudwatch:{GROUP}"),
        "--account-id",
        ACCOUNT,
        "--spool-dir",
        &spool.display().to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect()
}

fn start_agent(topology: &Topology, args: &[String], endpoint: &str) -> Agent {
    let env = agent_env(endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    AgentBuilder::new(&topology.a).args(args).envs(&env).start()
}

/// The lines of the `dir:` sink's log streams: stream name (the file without `.log`) -> lines.
fn dir_lines(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut streams = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("the dir: sink's directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let stream = name.strip_suffix(".log").expect("a .log file").to_owned();
        let text = fs::read_to_string(&path).expect("a log stream");
        streams
            .entry(stream)
            .or_insert_with(Vec::new)
            .extend(text.lines().map(str::to_owned));
    }
    streams
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// Every event the server accepted over its life (across restarts), per stream of [`GROUP`],
/// each checked to carry its record's start (the 11th field) as its timestamp.
fn accepted_by_stream(logs: &Path) -> BTreeMap<String, Vec<String>> {
    let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in cloudwatch::accepted(logs) {
        assert_eq!(event.group, GROUP);
        let start: i64 = event.message.split(' ').nth(10).unwrap().parse().unwrap();
        assert_eq!(event.timestamp, start * 1000, "{event:?}");
        streams.entry(event.stream).or_default().push(event.message);
    }
    streams
}

/// Every accepted call within PutLogEvents' limits.
fn check_calls(logs: &Path) -> Vec<cloudwatch::Call> {
    let calls = cloudwatch::calls(logs);
    for call in &calls {
        assert!(
            call.events <= MAX_EVENTS && call.bytes <= MAX_BYTES,
            "{call:?}"
        );
    }
    calls
}

/// The value of `name=` in the first line of `log` that contains `line` and names the
/// CloudWatch sink.
fn logged_value(log: &str, line: &str, name: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(line) && l.contains("cloudwatch:"))
        .unwrap_or_else(|| panic!("no {line:?} in the log:\n{log}"));
    let needle = format!("{name}=");
    let start = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + needle.len();
    line[start..]
        .split_whitespace()
        .next()
        .expect("a value")
        .to_owned()
}

/// The number of batches waiting in the sink's spool (whole files: `.obj`, not `.tmp`).
fn spooled(spool: &Path) -> usize {
    let Ok(entries) = fs::read_dir(spool) else {
        return 0;
    };
    entries
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .flat_map(|p| fs::read_dir(p).expect("spool"))
        .filter(|e| {
            let path = e.as_ref().expect("entry").path();
            path.extension().is_some_and(|x| x == "obj")
        })
        .count()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// End to end: one stream per interface, created by the agent with its group, holding exactly
/// the `dir:` sink's lines with the records' start as timestamps; the traffic adds up exactly;
/// a server that throttles every third call (and answers 503 every sixth) only delays delivery.
#[test]
fn events_are_the_dir_lines_in_one_stream_per_interface() {
    let topology = Topology::new(true);
    let work = scratch("e2e");
    let (dir, spool, logs) = (work.join("dir"), work.join("spool"), work.join("server"));
    let server =
        CloudWatchServer::start_with(&topology.a, PORT, &logs, &[("FLOWLOG_FAIL_EVERY", "3")]);
    let endpoint = server.endpoint();
    let agent = start_agent(&topology, &agent_args("1s", &dir, &spool), &endpoint);
    let mut expected = Expected::default();
    send_rounds(&topology, 0..4, Duration::from_millis(1100), &mut expected);
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(
        !stopped.stderr.contains(SECRET) && !stopped.stdout.contains(SECRET),
        "the secret key was printed"
    );

    // The agent's own report, then the server's view through boto3.
    assert_eq!(
        logged_value(
            &stopped.stderr,
            "CloudWatch delivery finished",
            "spooled_batches"
        ),
        "0"
    );
    assert_eq!(logged_value(&stopped.stderr, "sink finished", "lost"), "0");
    assert_eq!(
        logged_value(
            &stopped.stderr,
            "CloudWatch delivery finished",
            "ambiguous_attempts"
        ),
        "0"
    );
    assert_eq!(spooled(&spool), 0);
    let written = dir_lines(&dir);
    assert_eq!(written.keys().collect::<Vec<_>>(), ["a0-all", "a1-all"]);
    assert_eq!(
        cloudwatch::streams(&topology.a, &endpoint, GROUP),
        ["a0-all", "a1-all"]
    );
    for (stream, lines) in &written {
        let events = cloudwatch::events(&topology.a, &endpoint, GROUP, stream);
        let mut previous = 0;
        for (timestamp, message) in &events {
            let start: i64 = message.split(' ').nth(10).unwrap().parse().unwrap();
            assert_eq!(*timestamp, start * 1000, "{message}");
            assert!(*timestamp >= previous, "events out of order");
            previous = *timestamp;
        }
        let messages: Vec<String> = events.into_iter().map(|(_, m)| m).collect();
        assert_eq!(sorted(messages), sorted(lines.clone()), "stream {stream}");
    }
    let delivered = accepted_by_stream(&logs);
    assert_eq!(delivered.keys().collect::<Vec<_>>(), ["a0-all", "a1-all"]);
    for (stream, lines) in &written {
        assert_eq!(
            sorted(delivered[stream].clone()),
            sorted(lines.clone()),
            "{stream}: once each"
        );
    }
    expected.check(
        &parse_lines(&delivered["a0-all"].join("\n")),
        "CloudWatch events",
    );
    let calls = check_calls(&logs);
    let refused = calls.iter().filter(|c| c.refused.is_some()).count();
    assert!(refused >= 2, "the server refused nothing: {calls:?}");
    assert!(
        stopped.stderr.contains("ThrottlingException")
            && stopped
                .stderr
                .contains("delivery failed; the events wait in the spool"),
        "{}",
        stopped.stderr
    );

    // `check` describes the groups: this one exists, another would be created.
    let missing = "/flowlog/not-yet";
    let mut command = agent_command(&topology.a, &[]);
    command
        .args(["check", "--interface", "a0", "--sink"])
        .arg(format!("cloudwatch:{GROUP}"))
        .arg("--sink")
        .arg(format!("cloudwatch:{missing}"))
        .envs(agent_env(&endpoint));
    let output = output_within(&mut command, Duration::from_secs(60));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("log group {GROUP} exists")),
        "{said}"
    );
    assert!(
        said.contains(&format!("log group {missing} does not exist yet")),
        "{said}"
    );
    assert!(!said.contains(SECRET));
    drop(server);
    fs::remove_dir_all(&work).expect("clean up");
}

/// Two flow logs publish to the same group: a0's records of both land in one combined stream.
/// One interval holds more than 10,000 records of each, so its calls are cut: at 10,000
/// events for the short format, at a megabyte for the long one (256-character tags), each call
/// accepted by a server that refuses anything beyond the limits.
#[test]
fn an_interval_beyond_one_call_is_cut_within_the_limits() {
    let topology = Topology::new(false);
    let work = scratch("big");
    let logs = work.join("server");
    let server = CloudWatchServer::start(&topology.a, PORT, &logs);
    let endpoint = server.endpoint();
    let tag = "t".repeat(256);
    let config = work.join("flowlog.toml");
    let (short_dir, long_dir) = (work.join("short"), work.join("long"));
    fs::write(
        &config,
        format!(
            r#"[metadata]
account-id = "{ACCOUNT}"

[[flow-log]]
id = "fl-short"
scope = {{ interfaces = ["a0"] }}
interval = "5s"
format = "${{srcport}} ${{dstport}} ${{protocol}} ${{packets}} ${{bytes}} ${{interface-id}} ${{action}} ${{log-status}} ${{end}} ${{version}} ${{start}}"
sinks = ["cloudwatch:{GROUP}", "dir:{short}"]
object-store = {{ spool-dir = "{spool}" }}

[[flow-log]]
id = "fl-long"
scope = {{ interfaces = ["a0"] }}
interval = "5s"
format = "${{version}} ${{account-id}} ${{interface-id}} ${{srcaddr}} ${{dstaddr}} ${{srcport}} ${{dstport}} ${{protocol}} ${{packets}} ${{bytes}} ${{start}} ${{end}} ${{action}} ${{log-status}} ${{instance-tag}} ${{instance-tag-2}} ${{interface-tag}} ${{interface-tag-2}} ${{asg-tag}} ${{asg-tag-2}}"
sinks = ["cloudwatch:{GROUP}", "dir:{long}"]
object-store = {{ spool-dir = "{spool}" }}
metadata = {{ account-id = "{ACCOUNT}", instance-tag = "{tag}", instance-tag-2 = "{tag}", interface-tag = "{tag}", interface-tag-2 = "{tag}", asg-tag = "{tag}", asg-tag-2 = "{tag}" }}
"#,
            short = short_dir.display(),
            long = long_dir.display(),
            spool = work.join("spool").display(),
        ),
    )
    .expect("config");
    let args = ["--config".to_owned(), config.display().to_string()];
    let agent = start_agent(&topology, &args, &endpoint);
    // 10,500 flows in one 5 s interval: datagrams to as many ports, sent just after an
    // interval starts (intervals end on wall-clock multiples).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    thread::sleep(Duration::from_millis(
        5_200 - (now.as_millis() % 5_000) as u64,
    ));
    let pair = topology
        .udp
        .iter()
        .find(|p| p.a_addr.is_ipv4())
        .expect("IPv4");
    for port in 0..10_500u16 {
        pair.b
            .send_to(b"x", SocketAddr::new(pair.a_addr.ip(), 20_000 + port))
            .expect("send");
    }
    thread::sleep(Duration::from_secs(6));
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );

    let mut written = dir_lines(&short_dir)["a0-all"].clone();
    written.extend(dir_lines(&long_dir)["a0-all"].iter().cloned());
    // Both formats have the start 11th, so the timestamps are checked on every event.
    let delivered = accepted_by_stream(&logs);
    assert_eq!(delivered.keys().collect::<Vec<_>>(), ["a0-all"]);
    assert!(written.len() > 2 * MAX_EVENTS, "{} records", written.len());
    assert_eq!(
        sorted(delivered["a0-all"].clone()),
        sorted(written),
        "the combined stream, each line once"
    );
    // The calls: the short flow log's interval cut at 10,000 events, the long one's at a
    // megabyte (the next event would not have fitted).
    let calls = check_calls(&logs);
    assert!(calls.iter().any(|c| c.events == MAX_EVENTS), "{calls:?}");
    let long_event = 26 + 14 + 6 * 257 + 200;
    assert!(
        calls
            .iter()
            .any(|c| c.bytes > MAX_BYTES - long_event && c.events < MAX_EVENTS),
        "{calls:?}"
    );
    drop(server);
    fs::remove_dir_all(&work).expect("clean up");
}

/// The group is deleted while the agent runs (created again); then the server goes away for
/// several intervals; the agent is SIGKILLed during the outage and started again; the server
/// comes back empty (group and streams created again). Every line
/// both runs' `dir:` sinks wrote is delivered exactly once, in time order per call.
#[test]
fn an_outage_and_a_killed_agent_lose_and_duplicate_nothing() {
    let topology = Topology::new(true);
    let work = scratch("outage");
    let (dir, spool, logs) = (work.join("dir"), work.join("spool"), work.join("server"));
    let server = CloudWatchServer::start(&topology.a, PORT, &logs);
    let endpoint = server.endpoint();
    let args = agent_args("1s", &dir, &spool);
    let mut expected = Expected::default();

    // 1. Up: events arrive.
    let mut agent = start_agent(&topology, &args, &endpoint);
    send_round(&topology, 0, &mut expected);
    wait_until("first events", Duration::from_secs(10), || {
        !cloudwatch::accepted(&logs).is_empty()
    });

    // The group deleted while the agent runs: created again with the next events.
    cloudwatch::delete_group(&topology.a, &endpoint, GROUP);
    agent.wait_for_log("log group created", 2, Duration::from_secs(10));
    send_round(&topology, 100, &mut expected);
    wait_until("events in the new group", Duration::from_secs(10), || {
        cloudwatch::streams(&topology.a, &endpoint, GROUP).len() == 2
    });

    // 2. Down for several intervals; the agent is killed in the middle, just after a drain.
    server.stop();
    send_rounds(&topology, 1..4, Duration::from_millis(1100), &mut expected);
    agent.wait_for_log(
        "delivery failed; the events wait in the spool",
        1,
        Duration::from_secs(10),
    );
    // Killed as soon as both sinks have the next interval (a NODATA line for a1 in `dir:`, a
    // batch per stream in the spool), far from the drain after it: an interval drained but
    // not yet written by a killed agent is lost to every sink (README, "Running").
    let a1_lines =
        || fs::read_to_string(dir.join("a1-all.log")).map_or(0, |text| text.lines().count());
    let (lines, batches) = (a1_lines(), spooled(&spool));
    let deadline = Instant::now() + Duration::from_secs(10);
    while a1_lines() <= lines || spooled(&spool) < batches + 2 {
        assert!(Instant::now() < deadline, "no interval reached both sinks");
        thread::sleep(Duration::from_millis(10));
    }
    agent.signal(libc::SIGKILL);
    let killed = agent.wait_for_exit(Duration::from_secs(5));
    assert!(!killed.status.success());
    assert!(spooled(&spool) > 0, "nothing waits in the spool");

    // 3. Started again while the server is still down: the spool waits, new batches join it.
    let agent = start_agent(&topology, &args, &endpoint);
    assert!(agent.log().contains("delivered first"), "{}", agent.log());
    send_rounds(&topology, 4..6, Duration::from_millis(1100), &mut expected);

    // 4. Back, empty: the group and streams are created again and the spool drains.
    let server = CloudWatchServer::start(&topology.a, PORT, &logs);
    send_round(&topology, 6, &mut expected);
    wait_until("the spool drains", Duration::from_secs(30), || {
        spooled(&spool) == 0
    });
    thread::sleep(Duration::from_millis(1500));
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("log group created"),
        "{}",
        stopped.stderr
    );
    assert_eq!(spooled(&spool), 0);

    let written = dir_lines(&dir);
    let delivered = accepted_by_stream(&logs);
    assert_eq!(delivered.keys().collect::<Vec<_>>(), ["a0-all", "a1-all"]);
    for (stream, lines) in &written {
        assert_eq!(
            sorted(delivered[stream].clone()),
            sorted(lines.clone()),
            "{stream}: each line once"
        );
    }
    expected.check(
        &parse_lines(&delivered["a0-all"].join("\n")),
        "CloudWatch events",
    );
    check_calls(&logs);
    // The restarted server holds what came after its restart, read back through boto3.
    assert_eq!(
        cloudwatch::streams(&topology.a, &endpoint, GROUP),
        ["a0-all", "a1-all"]
    );
    drop(server);
    fs::remove_dir_all(&work).expect("clean up");
}

/// The server stops answering (frozen: its PutLogEvents calls hang). The agent, told to
/// stop, gives up its call at the deadline and exits within the 15 s bound, its batches left
/// in the spool; the next agent delivers them to a new server. Nothing lost or doubled.
#[test]
fn a_server_that_stops_answering_delays_a_stop_by_a_bounded_time() {
    let topology = Topology::new(true);
    let work = scratch("frozen");
    let (dir, spool, logs) = (work.join("dir"), work.join("spool"), work.join("server"));
    let server = CloudWatchServer::start(&topology.a, PORT, &logs);
    let endpoint = server.endpoint();
    let args = agent_args("1s", &dir, &spool);
    let mut expected = Expected::default();
    let agent = start_agent(&topology, &args, &endpoint);
    send_round(&topology, 0, &mut expected);
    wait_until("first events", Duration::from_secs(10), || {
        !cloudwatch::accepted(&logs).is_empty()
    });

    server.freeze();
    send_rounds(&topology, 1..3, Duration::from_millis(1100), &mut expected);
    let stopping = Instant::now();
    let stopped = agent.stop();
    let took = stopping.elapsed();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(took < Duration::from_secs(17), "the stop took {took:?}");
    assert!(
        stopped
            .stderr
            .contains("the stop deadline passed during a call"),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        logged_value(
            &stopped.stderr,
            "CloudWatch delivery finished",
            "ambiguous_attempts"
        ),
        "1"
    );
    assert!(
        stopped.stderr.contains("stay in the spool"),
        "{}",
        stopped.stderr
    );
    assert!(spooled(&spool) > 0);
    // Killed while frozen: what it holds unanswered is never stored.
    server.stop();

    let server = CloudWatchServer::start(&topology.a, PORT, &logs);
    let agent = start_agent(&topology, &args, &endpoint);
    send_round(&topology, 3, &mut expected);
    wait_until("the spool drains", Duration::from_secs(30), || {
        spooled(&spool) == 0
    });
    thread::sleep(Duration::from_millis(1500));
    let restarted = agent.stop();
    assert!(
        restarted.status.success(),
        "agent failed:\n{}",
        restarted.stderr
    );

    let written = dir_lines(&dir);
    let delivered = accepted_by_stream(&logs);
    for (stream, lines) in &written {
        assert_eq!(
            sorted(delivered[stream].clone()),
            sorted(lines.clone()),
            "{stream}: each line once"
        );
    }
    expected.check(
        &parse_lines(&delivered["a0-all"].join("\n")),
        "CloudWatch events",
    );
    drop(server);
    fs::remove_dir_all(&work).expect("clean up");
}

/// The environment of an agent signing with `key` (id, secret) for `endpoint`.
fn env_with_key(endpoint: &str, key: &(String, String)) -> Vec<(&'static str, String)> {
    let mut env = agent_env(endpoint);
    env.retain(|(name, _)| !["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].contains(name));
    env.push(("AWS_ACCESS_KEY_ID", key.0.clone()));
    env.push(("AWS_SECRET_ACCESS_KEY", key.1.clone()));
    env
}

/// `flowlog-agent check` of a CloudWatch sink with `env`: what it printed.
fn check_output(topology: &Topology, env: &[(&'static str, String)]) -> String {
    let mut command = agent_command(&topology.a, &[]);
    command
        .args(["check", "--interface", "a0", "--sink"])
        .arg(format!("cloudwatch:{GROUP}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let output = output_within(&mut command, Duration::from_secs(60));
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A server that authenticates (SigV4 against its IAM users' keys) and authorizes as IAM does:
/// the agent's signed requests are accepted; a missing `logs:CreateLogGroup` is named in the
/// agent's log (the events wait in the spool); `check` names a missing `logs:DescribeLogGroups`
/// and refused credentials, and `run` refuses to start with them; no secret is ever printed.
#[test]
fn iam_refusals_name_the_missing_action() {
    let topology = Topology::new(true);
    let work = scratch("iam");
    let (dir, spool, logs) = (work.join("dir"), work.join("spool"), work.join("server"));
    // Three unauthenticated actions per IAM user made below; everything after is checked.
    let server = CloudWatchServer::start_with(
        &topology.a,
        PORT,
        &logs,
        &[("INITIAL_NO_AUTH_ACTION_COUNT", "6")],
    );
    let endpoint = server.endpoint();
    // AWS's flow-log role without logs:CreateLogGroup; and a key allowed to write only.
    let writer = cloudwatch::iam_user(
        &topology.a,
        &endpoint,
        "writer",
        &[
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "logs:DescribeLogGroups",
            "logs:DescribeLogStreams",
        ],
    );
    let blind = cloudwatch::iam_user(&topology.a, &endpoint, "blind", &["logs:PutLogEvents"]);

    let said = check_output(&topology, &env_with_key(&endpoint, &writer));
    assert!(
        said.contains(&format!("log group {GROUP} does not exist yet")),
        "{said}"
    );
    let said = check_output(&topology, &env_with_key(&endpoint, &blind));
    assert!(said.contains("lack logs:DescribeLogGroups"), "{said}");
    let forged = (writer.0.clone(), "not-the-secret".to_owned());
    let said = check_output(&topology, &env_with_key(&endpoint, &forged));
    assert!(
        said.contains("credentials are missing or refused"),
        "{said}"
    );
    assert!(
        !said.contains(&writer.1) && !said.contains(&blind.1),
        "{said}"
    );

    // `run` with a key that may not describe the group: refused, naming the action.
    let env = env_with_key(&endpoint, &blind);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = AgentBuilder::new(&topology.a)
        .args(&agent_args("1s", &dir, &spool))
        .envs(&env)
        .try_start()
        .err()
        .expect("the agent started without logs:DescribeLogGroups");
    assert!(refused.contains("logs:DescribeLogGroups"), "{refused}");

    // `run` with the writer: signed requests pass, the group cannot be created.
    let env = env_with_key(&endpoint, &writer);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut agent = AgentBuilder::new(&topology.a)
        .args(&agent_args("1s", &dir, &spool))
        .envs(&env)
        .start();
    agent.wait_for_log("logs:CreateLogGroup is denied", 1, Duration::from_secs(10));
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stay in the spool"),
        "{}",
        stopped.stderr
    );
    assert!(spooled(&spool) > 0);
    assert!(cloudwatch::accepted(&logs).is_empty());
    assert!(
        !stopped.stderr.contains(&writer.1) && !stopped.stdout.contains(&writer.1),
        "the secret key was printed"
    );
    drop(server);
    fs::remove_dir_all(&work).expect("clean up");
}
