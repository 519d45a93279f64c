//! Log streams on a real file system: rotation by rename (logrotate's `create`), copytruncate,
//! a deleted directory, and streams of departed interfaces closed.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::{
    format::RecordFormat,
    record::{FlowRecord, Metadata, RecordKind},
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowlog-streams-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn sink(dir: &Path) -> LogStreamSink {
    let renderer = LineRenderer::new(
        Arc::new(RecordFormat::default()),
        Arc::new(Metadata::default()),
    );
    LogStreamSink::new(dir.to_owned(), "all", renderer).unwrap()
}

/// One NODATA record per interface, the interval starting at `start`.
fn interval(start: u64, interfaces: &[&str]) -> Arc<IntervalRecords> {
    let records = interfaces
        .iter()
        .map(|name| FlowRecord {
            interface: Arc::from(*name),
            ifindex: 2,
            interface_type: None,
            start,
            end: start + 1,
            kind: RecordKind::NoData,
        })
        .collect();
    Arc::new(IntervalRecords {
        start,
        end: start + 1,
        records,
    })
}

fn starts(path: &Path) -> Vec<u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.split(' ').nth(10).unwrap().parse().unwrap())
        .collect()
}

fn open_streams(sink: &LogStreamSink) -> usize {
    sink.streams.as_ref().unwrap().open.len()
}

#[tokio::test]
async fn rotation_by_rename_and_by_copytruncate_loses_and_repeats_nothing() {
    let dir = scratch("rotate");
    let mut sink = sink(&dir);
    let stream = dir.join("eth0-all.log");
    sink.write(interval(1, &["eth0"])).await.unwrap();
    // logrotate `create`: rename, then a new empty file in its place; no signal needed.
    let rotated = dir.join("eth0-all.log.1");
    fs::rename(&stream, &rotated).unwrap();
    fs::write(&stream, "").unwrap();
    sink.write(interval(2, &["eth0"])).await.unwrap();
    assert_eq!(starts(&rotated), [1]);
    assert_eq!(starts(&stream), [2]);
    // copytruncate: copied away, then truncated in place; appends go on at the new end.
    fs::copy(&stream, dir.join("eth0-all.log.2")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&stream)
        .unwrap()
        .set_len(0)
        .unwrap();
    sink.write(interval(3, &["eth0"])).await.unwrap();
    assert_eq!(
        fs::read(&stream).unwrap().first(),
        Some(&b'2'),
        "no hole of zeros before the line"
    );
    assert_eq!(starts(&stream), [3]);
    // SIGHUP closes every stream; the next write opens them again.
    sink.reopen();
    sink.write(interval(4, &["eth0"])).await.unwrap();
    assert_eq!(starts(&stream), [3, 4]);
    let written: u64 = ["eth0-all.log", "eth0-all.log.1"]
        .iter()
        .map(|name| fs::metadata(dir.join(name)).unwrap().len())
        .sum::<u64>()
        + fs::metadata(dir.join("eth0-all.log.2")).unwrap().len();
    assert_eq!(sink.bytes_written().get(), written);
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_deleted_or_renamed_directory_is_created_again_with_its_modes() {
    let dir = scratch("deleted");
    let mut sink = sink(&dir);
    sink.write(interval(1, &["eth0", "eth1"])).await.unwrap();
    fs::remove_dir_all(&dir).unwrap();
    sink.write(interval(2, &["eth0", "eth1"])).await.unwrap();
    assert_eq!(starts(&dir.join("eth0-all.log")), [2]);
    assert_eq!(starts(&dir.join("eth1-all.log")), [2]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // The process mask may only take bits away.
    assert_eq!(mode(&dir) & !DIR_MODE, 0, "{:o}", mode(&dir));
    assert_eq!(mode(&dir.join("eth0-all.log")) & !FILE_MODE, 0);

    let moved = scratch("deleted-moved");
    fs::rename(&dir, &moved).unwrap();
    sink.write(interval(3, &["eth0", "eth1"])).await.unwrap();
    assert_eq!(starts(&moved.join("eth0-all.log")), [2]);
    assert_eq!(starts(&dir.join("eth0-all.log")), [3]);
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&moved).unwrap();
}

#[tokio::test]
async fn streams_of_interfaces_gone_for_an_interval_are_closed() {
    let dir = scratch("gone");
    let mut sink = sink(&dir);
    let names: Vec<String> = (0..50).map(|i| format!("veth{i}")).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    sink.write(interval(1, &all)).await.unwrap();
    assert_eq!(open_streams(&sink), 50);
    sink.write(interval(2, &all[..3])).await.unwrap();
    assert_eq!(open_streams(&sink), 3);
    // An interface that comes back gets its stream again, appended.
    sink.write(interval(3, &all[..4])).await.unwrap();
    assert_eq!(open_streams(&sink), 4);
    assert_eq!(starts(&dir.join("veth3-all.log")), [1, 3]);
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_retry_writes_only_the_streams_that_failed() {
    let dir = scratch("retry");
    let mut sink = sink(&dir);
    // eth1's stream cannot be opened: its path is taken by a directory.
    fs::create_dir_all(dir.join("eth1-all.log")).unwrap();
    let first = interval(1, &["eth0", "eth1", "eth2"]);
    assert!(sink.write(Arc::clone(&first)).await.is_err());
    assert!(sink.write(Arc::clone(&first)).await.is_err());
    assert_eq!(starts(&dir.join("eth0-all.log")), [1]);
    assert_eq!(starts(&dir.join("eth2-all.log")), [1]);
    fs::remove_dir(dir.join("eth1-all.log")).unwrap();
    sink.write(Arc::clone(&first)).await.unwrap();
    for name in ["eth0", "eth1", "eth2"] {
        assert_eq!(
            starts(&dir.join(format!("{name}-all.log"))),
            [1],
            "{name}: once"
        );
    }

    // Given up half-way: what was written is counted delivered, the rest lost.
    fs::create_dir_all(dir.join("eth9-all.log")).unwrap();
    let second = interval(2, &["eth0", "eth9"]);
    assert!(sink.write(Arc::clone(&second)).await.is_err());
    assert_eq!(sink.give_up(&second), 1);
    assert_eq!(sink.give_up(&second), 0, "progress is forgotten");
    fs::remove_dir_all(&dir).unwrap();
}
