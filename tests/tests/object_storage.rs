//! Object-storage delivery against real parts: the agent archives to a real S3-compatible
//! server (moto, on the loopback of the test namespace) and to `file://`; the objects are read
//! back with independent readers (boto3, `gzip -dc`, pyarrow, parquet-python). Keys must follow the AWS layout
//! exactly, records must add up to the traffic sent exactly, and an outage of the store (with
//! an agent restart in the middle) must lose and duplicate nothing.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent::{Agent, AgentBuilder, agent_binary},
    metrics::scrape,
    netns::NetNs,
    records::{parse_line, parse_lines},
    s3::{Relay, S3Server, create_bucket, download_all, gunzip, run_script},
    topology::{Expected, TcpRound, Topology},
};

const ACCOUNT: &str = "123456789010";
const REGION: &str = "us-east-1";
const BUCKET: &str = "flowlogs";
const PORT: u16 = 9000;
/// Given to the agent in its environment; must never appear in what it prints.
const SECRET: &str = "flowlog-test-secret";
const CREDENTIALS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "flowlog-test"),
    ("AWS_SECRET_ACCESS_KEY", SECRET),
];
const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol \
                      packets bytes start end action log-status";

/// The TCP part of this file's traffic rounds.
const TCP_ROUND: TcpRound = TcpRound {
    port: 6000,
    client_bytes: 50_000,
    server_bytes: 20_000,
};

fn send_round(topology: &Topology, round: u64, expected: &mut Expected) {
    topology.send_round(round, &TCP_ROUND, expected);
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/flowlog-objects-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn s3_sink(endpoint: &str) -> String {
    format!("s3://{BUCKET}/archive?endpoint={endpoint}&allow_http=true&region={REGION}")
}

/// The value of `name=` in the first log line that has it.
fn logged_value(log: &str, name: &str) -> String {
    let needle = format!("{name}=");
    let start = log
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in the log:\n{log}"))
        + needle.len();
    log[start..]
        .split_whitespace()
        .next()
        .expect("a value")
        .to_owned()
}

/// `date -u` of a Unix time as "YYYY MM DD HH MM": calendar arithmetic independent of the
/// agent's.
fn utc(seconds: u64) -> [String; 5] {
    let output = Command::new("date")
        .args(["-u", "-d", &format!("@{seconds}"), "+%Y %m %d %H %M"])
        .output()
        .expect("date");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let parts: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    parts.try_into().expect("five fields")
}

/// Checks one text object's key against the layout AWS writes (with hourly partitions) and its
/// content (header, then records); returns the record lines.
/// Rounds `rounds` of [`send_round`], `pause` after each (the agent drains and rotates between).
fn send_rounds(
    topology: &Topology,
    rounds: std::ops::Range<u64>,
    pause: Duration,
    expected: &mut Expected,
) {
    topology.send_rounds(rounds, pause, &TCP_ROUND, expected);
}

fn check_text_object(key: &str, text: &str, flow_log_id: &str, rotate: u64) -> Vec<String> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER), "{key}: header line");
    let records: Vec<String> = lines.map(str::to_owned).collect();
    assert!(!records.is_empty(), "{key}: no records");
    // The idle interface's NODATA record starts exactly at its interval's start, which lies in
    // the object's window.
    let interval_start = records
        .iter()
        .map(|line| parse_line(line))
        .filter(|r| r.interface == "a1")
        .map(|r| r.start)
        .min()
        .unwrap_or_else(|| panic!("{key}: no NODATA record of a1"));
    let window = interval_start / rotate * rotate;
    let [year, month, day, hour, minute] = utc(window);
    let prefix = format!(
        "archive/AWSLogs/{ACCOUNT}/vpcflowlogs/{REGION}/{year}/{month}/{day}/{hour}/\
         {ACCOUNT}_vpcflowlogs_{REGION}_{flow_log_id}_{year}{month}{day}T{hour}{minute}Z_"
    );
    let suffix = key
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("key {key:?} does not start with {prefix:?}"));
    let hex = suffix
        .strip_suffix(".log.gz")
        .unwrap_or_else(|| panic!("{key}: not .log.gz"));
    assert!(
        hex.len() == 8
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase()),
        "{key}: 8 lower-case hex digits"
    );
    records
}

/// Every object of the bucket, read back with boto3 and `gzip -dc`: key -> record lines.
fn read_bucket(ns: &NetNs, endpoint: &str, into: &Path) -> BTreeMap<String, String> {
    let keys = download_all(ns, endpoint, BUCKET, into);
    keys.into_iter()
        .map(|key| {
            let text = gunzip(&into.join(&key));
            (key, text)
        })
        .collect()
}

/// The agent's flags for archiving `a0` and `a1` to `sink` (records on stdout too), with this
/// interval and rotation, then `extra`.
fn archive_args(
    interval: &str,
    rotate: &str,
    sink: &str,
    spool: &Path,
    extra: &[&str],
) -> Vec<String> {
    let spool = spool.to_str().expect("UTF-8 path");
    [
        "--interval",
        interval,
        "--rotate",
        rotate,
        "--interface",
        "a0",
        "--interface",
        "a1",
        "--sink",
        "stdout",
        "--sink",
        sink,
        "--account-id",
        ACCOUNT,
        "--region",
        REGION,
        "--spool-dir",
        spool,
    ]
    .iter()
    .chain(extra)
    .map(|arg| (*arg).to_owned())
    .collect()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn stdout_lines(stdout: &str) -> Vec<String> {
    stdout.lines().map(str::to_owned).collect()
}

#[test]
fn s3_text_objects_hold_exactly_the_traffic_under_aws_keys() {
    let topology = Topology::new(true);
    let s3 = S3Server::start(&topology.a, PORT, &[]);
    create_bucket(&topology.a, &s3.endpoint(), BUCKET);
    let work = scratch("s3-text");
    let spool = work.join("spool");
    let sink = s3_sink(&s3.endpoint());
    let args = archive_args("2s", "4s", &sink, &spool, &["--per-hour-partition"]);
    let agent = AgentBuilder::new(&topology.a)
        .args(&as_strs(&args))
        .envs(CREDENTIALS)
        .start();
    let mut expected = Expected::default();
    // About 9 s of traffic: at least two 4 s objects.
    send_rounds(&topology, 0..6, Duration::from_millis(1500), &mut expected);
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(!stopped.stderr.contains(SECRET) && !stopped.stdout.contains(SECRET));
    let flow_log_id = logged_value(&stopped.stderr, "flow_log_id");
    assert!(
        flow_log_id.len() == 20
            && flow_log_id.starts_with("fl-")
            && flow_log_id[3..].chars().all(|c| c.is_ascii_hexdigit()),
        "{flow_log_id}"
    );

    let objects = read_bucket(&topology.a, &s3.endpoint(), &work.join("download"));
    assert!(
        objects.len() >= 2,
        "only {} objects: no rotation",
        objects.len()
    );
    let mut in_objects = Vec::new();
    for (key, text) in &objects {
        in_objects.extend(check_text_object(key, text, &flow_log_id, 4));
    }
    // Exactly the records the agent wrote to stdout, each once, and the traffic exactly.
    assert_eq!(
        sorted(in_objects.clone()),
        sorted(stdout_lines(&stopped.stdout))
    );
    expected.check(&parse_lines(&in_objects.join("\n")), "objects");
    // Everything was uploaded: the spool is empty.
    let left: Vec<_> = fs::read_dir(spool.read_dir().unwrap().next().unwrap().unwrap().path())
        .unwrap()
        .collect();
    assert!(left.is_empty(), "spool not empty: {left:?}");
    fs::remove_dir_all(&work).expect("clean up");
}

/// An agent killed (SIGKILL) before it sealed its object loses none of the object's records:
/// they were journaled, and the next start seals them into an object under the AWS layout.
#[test]
fn a_killed_agent_loses_no_record_of_its_open_object() {
    let topology = Topology::new(true);
    let s3 = S3Server::start(&topology.a, PORT, &[]);
    create_bucket(&topology.a, &s3.endpoint(), BUCKET);
    let work = scratch("s3-killed");
    let spool = work.join("spool");
    let sink = s3_sink(&s3.endpoint());
    // An hour-long object: without the journal, everything the first run wrote would be lost.
    let args = archive_args("2s", "1h", &sink, &spool, &["--per-hour-partition"]);
    let args = as_strs(&args);
    let mut expected = Expected::default();
    let mut agent = AgentBuilder::new(&topology.a)
        .args(&args)
        .envs(CREDENTIALS)
        .start();
    send_round(&topology, 0, &mut expected);
    // Two drains after the traffic, then the kill once both sinks hold all of them (nothing
    // waiting: stdout written, the object sink's journal appended), well before the next drain.
    agent.wait_for_log("interval written", 2, Duration::from_secs(10));
    wait_until_sinks_hold_everything(&topology.a);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
    let killed = agent.stop();
    assert!(!killed.status.success());

    let agent = AgentBuilder::new(&topology.a)
        .args(&args)
        .envs(CREDENTIALS)
        .start();
    assert!(
        agent
            .log()
            .contains("sealed the records a stopped run had journaled"),
        "{}",
        agent.log()
    );
    send_round(&topology, 1, &mut expected);
    thread::sleep(Duration::from_millis(300));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let flow_log_id = logged_value(&stopped.stderr, "flow_log_id");
    let objects = read_bucket(&topology.a, &s3.endpoint(), &work.join("download"));
    let mut in_objects = Vec::new();
    for (key, text) in &objects {
        in_objects.extend(check_text_object(key, text, &flow_log_id, 3600));
    }
    // Every record either run wrote to stdout is in an object, once; the traffic exactly.
    let mut written = stdout_lines(&killed.stdout);
    written.extend(stdout_lines(&stopped.stdout));
    assert_eq!(sorted(in_objects.clone()), sorted(written));
    expected.check(&parse_lines(&in_objects.join("\n")), "objects");
    fs::remove_dir_all(&work).expect("clean up");
}

/// Waits until every sink of the agent in `ns` has written all it was offered (the metrics'
/// `records_waiting` are all 0), so that a kill now cuts no delivery in half.
fn wait_until_sinks_hold_everything(ns: &NetNs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(ns, "/metrics");
        let waiting: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with("flowlog_sink_records_waiting{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        if waiting.len() == 2 && waiting.iter().all(|w| *w == 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks still have records waiting:\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The store never answers and the spool has the smallest bound: the oldest objects are dropped, each
/// drop logged with its records, and the records add up: every record written is either in an
/// object still spooled or in a logged drop, and the sink's final report counts the drops.
#[test]
fn a_full_spool_drops_the_oldest_objects_and_accounts_for_every_record() {
    let topology = Topology::new(true);
    let work = scratch("spool-bound");
    let spool = work.join("spool");
    // Nothing listens there: the agent warns and spools.
    let sink = s3_sink(&format!("http://127.0.0.1:{PORT}"));
    // The smallest bound: a few objects of about 500 bytes exceed it.
    const BOUND: u64 = 1024;
    let bound = BOUND.to_string();
    let args = archive_args("1s", "1s", &sink, &spool, &["--spool-max-bytes", &bound]);
    let agent = AgentBuilder::new(&topology.a)
        .args(&as_strs(&args))
        .envs(CREDENTIALS)
        .start();
    let mut expected = Expected::default();
    send_rounds(&topology, 0..8, Duration::from_millis(800), &mut expected);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // What is still spooled, from the spool files' headers.
    let dir = spool.read_dir().unwrap().next().unwrap().unwrap().path();
    let mut spooled_records = 0;
    let mut spooled_bytes = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read(&path).unwrap();
        let header =
            String::from_utf8_lossy(&text[..text.iter().position(|b| *b == b'\n').unwrap()])
                .into_owned();
        let records: u64 = header.split(' ').nth(2).unwrap().parse().unwrap();
        spooled_records += records;
        spooled_bytes += text.len() as u64;
    }
    let drops: Vec<u64> = stopped
        .stderr
        .lines()
        .filter(|line| line.contains("spool full: oldest object dropped"))
        .map(|line| logged_value(line, "records").parse().unwrap())
        .collect();
    assert!(
        drops.len() >= 2,
        "the bound was never reached:\n{}",
        stopped.stderr
    );
    // The bound holds, give or take the newest object (never dropped).
    assert!(spooled_bytes <= 2 * BOUND, "{spooled_bytes} bytes spooled");
    let written = stdout_lines(&stopped.stdout).len() as u64;
    let dropped: u64 = drops.iter().sum();
    assert_eq!(
        spooled_records + dropped,
        written,
        "spooled + dropped vs written"
    );
    let finished = stopped
        .stderr
        .lines()
        .find(|line| line.contains("sink finished") && line.contains("s3://"))
        .expect("the object sink's report");
    assert_eq!(
        logged_value(finished, "lost"),
        dropped.to_string(),
        "{finished}"
    );
    fs::remove_dir_all(&work).expect("clean up");
}

/// The store goes down while the agent runs across several rotations; the agent is restarted
/// in the middle of the outage; the store comes back. Every record arrives exactly once.
///
/// The outage is a relay in front of the store that closes its port and cuts its connections:
/// the store keeps what arrived, and the test reads it once at the end (reading before the
/// outage raced with an upload in between, whose object a killed store then lost).
#[test]
fn an_outage_with_an_agent_restart_loses_and_duplicates_nothing() {
    let topology = Topology::new(true);
    let work = scratch("outage");
    let spool = work.join("spool");
    let s3 = S3Server::start(&topology.a, PORT + 2, &[]);
    create_bucket(&topology.a, &s3.endpoint(), BUCKET);
    let mut relay = Relay::start(&topology.a, PORT, PORT + 2);
    let sink = s3_sink(&relay.endpoint());
    let args = archive_args("1s", "2s", &sink, &spool, &["--per-hour-partition"]);
    let args = as_strs(&args);
    let mut expected = Expected::default();
    let mut stdout = Vec::new();

    // 1. Store up: objects arrive.
    let mut agent = AgentBuilder::new(&topology.a)
        .args(&args)
        .envs(CREDENTIALS)
        .start();
    send_round(&topology, 0, &mut expected);
    agent.wait_for_log("object uploaded", 1, Duration::from_secs(20));

    // 2. Outage across several rotations, then the agent restarts while the store is down.
    relay.down();
    send_rounds(&topology, 1..4, Duration::from_millis(1200), &mut expected);
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    assert!(
        stopped
            .stderr
            .contains("upload failed; the object stays in the spool"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stay in the spool"),
        "{}",
        stopped.stderr
    );
    stdout.extend(stdout_lines(&stopped.stdout));

    let agent = AgentBuilder::new(&topology.a)
        .args(&args)
        .envs(CREDENTIALS)
        .start();
    let started = agent.log();
    assert!(
        started.contains("destination unreachable at start-up"),
        "{started}"
    );
    assert!(started.contains("will be uploaded first"), "{started}");
    // The spool gauges count what the previous run left from the start.
    let (_, left_objects) = spool_gauges_match_disk(&topology.a, &spool);
    assert!(left_objects > 0);
    send_rounds(&topology, 4..6, Duration::from_millis(1200), &mut expected);
    // A new object is sealed when an interval of the next --rotate window arrives.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (_, waiting) = spool_gauges_match_disk(&topology.a, &spool);
        if waiting > left_objects {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new objects wait in the spool too ({waiting} vs {left_objects})"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // 3. The store is back: the spool drains, oldest first.
    relay.up(&topology.a);
    send_round(&topology, 6, &mut expected);
    let deadline = Instant::now() + Duration::from_secs(40);
    while spool_files(&spool) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(spool_files(&spool), 0, "the spool did not drain");
    // New objects keep coming (NODATA on a1): catch the spool empty between two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool_gauges_match_disk(&topology.a, &spool) != (0, 0) {
        assert!(Instant::now() < deadline, "the spool gauges never read 0");
        thread::sleep(Duration::from_millis(100));
    }
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    stdout.extend(stdout_lines(&stopped.stdout));
    drop(relay);
    let objects = read_bucket(&topology.a, &s3.endpoint(), &work.join("objects"));
    drop(s3);
    let flow_log_id = logged_value(&stopped.stderr, "flow_log_id");
    let mut in_objects = Vec::new();
    for (key, text) in &objects {
        in_objects.extend(check_text_object(key, text, &flow_log_id, 2));
    }
    assert_eq!(
        sorted(in_objects.clone()),
        sorted(stdout),
        "every record exactly once"
    );
    expected.check(&parse_lines(&in_objects.join("\n")), "objects");
    fs::remove_dir_all(&work).expect("clean up");
}

/// The spooled objects' total size and count on disk.
fn spool_on_disk(spool: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    for sink in fs::read_dir(spool).into_iter().flatten().flatten() {
        for file in fs::read_dir(sink.path()).into_iter().flatten().flatten() {
            if file.path().extension().is_some_and(|e| e == "obj") {
                total.0 += file.metadata().map_or(0, |m| m.len());
                total.1 += 1;
            }
        }
    }
    total
}

/// Scrapes the sink's spool gauges at a moment the spool does not change, checks they equal
/// what is on disk, and returns them (bytes, objects).
fn spool_gauges_match_disk(ns: &NetNs, spool: &Path) -> (u64, u64) {
    let gauge = |text: &str, name: &str| -> u64 {
        let samples: Vec<u64> = text
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(samples.len(), 1, "one {name} series expected:\n{text}");
        samples[0]
    };
    for _ in 0..10 {
        // The gauges follow a change on disk within microseconds: a change before the scrape
        // shows in it, one after shows in `after`.
        let before = spool_on_disk(spool);
        thread::sleep(Duration::from_millis(20));
        let response = scrape(ns, "/metrics");
        thread::sleep(Duration::from_millis(20));
        let after = spool_on_disk(spool);
        if before == after {
            let gauges = (
                gauge(&response, "flowlog_sink_spool_bytes"),
                gauge(&response, "flowlog_sink_spool_objects"),
            );
            assert_eq!(gauges, before, "spool gauges vs the spool directory");
            return gauges;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("the spool never stood still");
}

fn spool_files(spool: &Path) -> usize {
    fs::read_dir(spool)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|sink| fs::read_dir(sink.path()).into_iter().flatten().flatten())
        .count()
}

/// Parquet objects in a `file://` archive (Hive-compatible keys), read back with pyarrow and
/// with a Parquet-1.0-only reader (`parquet`): the same rows as the text records, the reference's column names and physical types. The same
/// run checks JSON lines in a log-stream directory.
#[test]
fn parquet_objects_read_back_with_pyarrow_and_json_lines_carry_the_records() {
    let topology = Topology::new(true);
    let work = scratch("parquet");
    let archive = work.join("archive");
    let json_dir = work.join("json");
    let format = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} \
                  ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} \
                  ${log-status} ${tcp-flags} ${type} ${flow-direction} ${traffic-path}";
    let file_sink = format!("file://{}", archive.display());
    let json_sink = format!("json:dir:{}", json_dir.display());
    let agent = Agent::start(
        &topology.a,
        &[
            "--interval",
            "2s",
            "--rotate",
            "4s",
            "--file-format",
            "parquet",
            "--hive-partitions",
            "--flow-log-id",
            "fl-0123456789abcdef0",
            "--format",
            format,
            "--interface",
            "a0",
            "--interface",
            "a1",
            "--sink",
            "stdout",
            "--sink",
            &file_sink,
            "--sink",
            &json_sink,
            "--account-id",
            ACCOUNT,
            "--region",
            REGION,
            "--spool-dir",
            work.join("spool").to_str().unwrap(),
        ],
    );
    let mut expected = Expected::default();
    send_rounds(&topology, 0..3, Duration::from_millis(1500), &mut expected);
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    let lines = stdout_lines(&stopped.stdout);

    let mut files = Vec::new();
    collect_files(&archive, &mut files);
    assert!(!files.is_empty());
    let mut rows = Vec::new();
    let args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let output = run_script(&topology.a, "parquet_rows.py", &args);
    for document in String::from_utf8(output.stdout).unwrap().lines() {
        let document: serde_json::Value = serde_json::from_str(document).unwrap();
        let file = document["file"].as_str().unwrap();
        let key = file
            .strip_prefix(&format!("{}/", archive.display()))
            .unwrap();
        let name = key.rsplit('/').next().unwrap();
        let expected_dir = format!(
            "AWSLogs/aws-account-id={ACCOUNT}/aws-service=vpcflowlogs/aws-region={REGION}/"
        );
        assert!(key.starts_with(&expected_dir), "{key}");
        let partitions = key[expected_dir.len()..].split('/').collect::<Vec<_>>();
        let [year, month, day, _] = partitions[..] else {
            panic!("{key}: year/month/day/file");
        };
        let stamp = name.split('_').nth(4).unwrap();
        assert_eq!(
            format!(
                "year={}/month={}/day={}",
                &stamp[..4],
                &stamp[4..6],
                &stamp[6..8]
            ),
            format!("{year}/{month}/{day}")
        );
        assert!(name.starts_with(&format!(
            "{ACCOUNT}_vpcflowlogs_{REGION}_fl-0123456789abcdef0_"
        )));
        assert!(name.ends_with(".log.parquet"), "{name}");

        let columns: Vec<(String, String, String)> = document["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["physical_type"].as_str().unwrap().to_owned(),
                    c["logical_type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want = [
            ("version", "INT32"),
            ("account_id", "BYTE_ARRAY"),
            ("interface_id", "BYTE_ARRAY"),
            ("srcaddr", "BYTE_ARRAY"),
            ("dstaddr", "BYTE_ARRAY"),
            ("srcport", "INT32"),
            ("dstport", "INT32"),
            ("protocol", "INT32"),
            ("packets", "INT64"),
            ("bytes", "INT64"),
            ("start", "INT64"),
            ("end", "INT64"),
            ("action", "BYTE_ARRAY"),
            ("log_status", "BYTE_ARRAY"),
            ("tcp_flags", "INT32"),
            ("type", "BYTE_ARRAY"),
            ("flow_direction", "BYTE_ARRAY"),
            ("traffic_path", "INT32"),
        ];
        assert_eq!(columns.len(), want.len());
        for ((name, physical, logical), (want_name, want_physical)) in columns.iter().zip(want) {
            assert_eq!(
                (name.as_str(), physical.as_str()),
                (want_name, want_physical)
            );
            if physical == "BYTE_ARRAY" {
                assert_eq!(logical, "String", "{name}: a STRING column");
            }
        }
        for row in document["rows"].as_array().unwrap() {
            // Back to a text line: a null is `-` (numeric columns), strings are as written.
            let fields: Vec<String> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|value| match value {
                    serde_json::Value::Null => "-".to_owned(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            rows.push(fields.join(" "));
        }
    }
    assert_eq!(
        sorted(rows.clone()),
        sorted(lines.clone()),
        "parquet rows vs records"
    );
    // A reader that knows only Parquet 1.0 encodings reads the same rows.
    let output = run_script(&topology.a, "parquet_rows_v1.py", &args);
    let mut rows_v1 = Vec::new();
    for document in String::from_utf8(output.stdout).unwrap().lines() {
        let document: serde_json::Value = serde_json::from_str(document).unwrap();
        for row in document["rows"].as_array().unwrap() {
            let fields: Vec<String> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|value| match value {
                    serde_json::Value::Null => "-".to_owned(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            rows_v1.push(fields.join(" "));
        }
    }
    assert_eq!(
        sorted(rows_v1),
        sorted(lines.clone()),
        "Parquet-1.0 reader's rows vs records"
    );
    // NODATA rows have nulls, not `-`, in their numeric columns.
    assert!(lines.iter().any(|l| l.contains(" a1 - - - - - - - ")));

    // The first 14 fields are the default format: the exact traffic.
    let default_fields: Vec<String> = rows
        .iter()
        .map(|r| r.split(' ').take(14).collect::<Vec<_>>().join(" "))
        .collect();
    expected.check(&parse_lines(&default_fields.join("\n")), "objects");

    // JSON lines: one {"message": "<record>"} per line, in each interface's stream.
    let mut messages = Vec::new();
    for interface in ["a0", "a1"] {
        let text = fs::read_to_string(json_dir.join(format!("{interface}-all.log"))).unwrap();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object().unwrap();
            assert_eq!(object.len(), 1, "{line}");
            messages.push(object["message"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(sorted(messages), sorted(lines));
    fs::remove_dir_all(&work).expect("clean up");
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Runs the agent until it exits (it must refuse to start) and returns what it said.
fn refused(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> String {
    let binary = agent_binary();
    let mut child = ns
        .command(binary.to_str().unwrap())
        .arg("run")
        .args([
            "--interface",
            "a0",
            "--account-id",
            ACCOUNT,
            "--region",
            REGION,
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    // An agent that wrongly starts would run until stopped: give it 60 s, then fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waitpid").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("wait");
            panic!(
                "the agent did not refuse to start {args:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("wait");
    assert!(
        !output.status.success(),
        "the agent should have refused to start"
    );
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!text.contains(SECRET), "a secret was printed: {text}");
    text
}

#[test]
fn bad_destinations_are_refused_naming_the_sink() {
    // `_b` keeps the peer namespace (and so `a0`) until the test ends.
    let Topology { a, b: _b, .. } = Topology::builder().unaddressed().build();

    let error = refused(&a, &["--sink", "s3:///no-bucket"], &[]);
    assert!(
        error.contains("s3:// needs a bucket") && error.contains("--sink"),
        "{error}"
    );
    let error = refused(&a, &["--sink", "ftp://host/x"], &[]);
    assert!(error.contains("unknown sink \"ftp://host/x\""), "{error}");
    let error = refused(
        &a,
        &["--sink", "s3://b/p?secret_access_key=typed-by-the-user"],
        &[],
    );
    assert!(
        error.contains("\"secret_access_key\" is a secret"),
        "{error}"
    );

    let s3 = S3Server::start(&a, PORT, &[]);
    let sink = format!(
        "s3://no-such-bucket/p?endpoint={}&allow_http=true&region={REGION}",
        s3.endpoint()
    );
    let error = refused(&a, &["--sink", &sink], CREDENTIALS);
    assert!(
        error.contains(
            "sink s3://no-such-bucket/p: refusing to start: the bucket or container does not exist"
        ),
        "{error}"
    );
    drop(s3);

    // A server that checks credentials and knows none: every key is refused.
    let s3 = S3Server::start(&a, PORT + 1, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let sink = format!(
        "s3://flowlogs/p?endpoint={}&allow_http=true&region={REGION}",
        s3.endpoint()
    );
    let error = refused(&a, &["--sink", &sink], CREDENTIALS);
    assert!(
        error.contains("sink s3://flowlogs/p: refusing to start: the credentials were refused or lack permission"),
        "{error}"
    );
}
