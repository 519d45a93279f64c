//! The sink itself over a `file://` store: windows, the size cap, shutdown, and the spool.

use std::{
    fs,
    io::Read,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use flate2::read::GzDecoder;

use super::*;
use crate::{
    format::RecordFormat,
    record::{Direction, Flow, FlowRecord, Metadata, RecordKind, Verdict},
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowlog-sink-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn options(spool: &Path, rotate: u64, max_object_size: u64) -> ArchiveOptions {
    ArchiveOptions {
        file_format: FileFormat::Text,
        hive_partitions: false,
        per_hour_partition: false,
        rotate: Duration::from_secs(rotate),
        max_object_size,
        flow_log_id: None,
        spool_dir: spool.to_owned(),
        spool_max_bytes: 1 << 30,
    }
}

fn layout(url: &ObjectUrl) -> KeyLayout {
    KeyLayout {
        prefix: url.prefix().to_owned(),
        account_id: "123456789010".into(),
        region: "eu-west-1".into(),
        flow_log_id: "fl-00000000000000001".into(),
        hive_partitions: false,
        per_hour_partition: false,
        file_format: FileFormat::Text,
    }
}

fn renderer() -> LineRenderer {
    LineRenderer::new(
        Arc::new(RecordFormat::default()),
        Arc::new(Metadata {
            account_id: Some("123456789010".into()),
            ..Metadata::default()
        }),
    )
}

/// An interval of `flows` records, ports numbered from `first_port`.
fn interval(start: u64, end: u64, first_port: u16, flows: u16) -> Arc<IntervalRecords> {
    let records = (0..flows)
        .map(|i| FlowRecord {
            interface: Arc::from("eth0"),
            ifindex: 2,
            interface_type: None,
            start,
            end,
            kind: RecordKind::Flow(Flow {
                direction: Direction::Ingress,
                src_addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                dst_addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
                src_port: first_port + i,
                dst_port: 443,
                protocol: 6,
                packets: 1,
                bytes: 60,
                verdict: Verdict::Accept,
                tcp_flags: 2,
                drop_reason: None,
            }),
        })
        .collect();
    Arc::new(IntervalRecords {
        start,
        end,
        records,
    })
}

/// Every object under `dir`: key -> decompressed text.
fn objects(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut text = String::new();
                GzDecoder::new(fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap();
                let key = path.strip_prefix(dir).unwrap().display().to_string();
                found.push((key, text));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_per_window_and_one_more_at_shutdown() {
    let dir = scratch("windows");
    let url = ObjectUrl::parse(&format!("file://{}", dir.join("archive").display())).unwrap();
    let mut sink = ObjectStoreSink::start(
        &url,
        layout(&url),
        &options(&dir.join("spool"), 300, 75_000_000),
        renderer(),
    )
    .await
    .unwrap();
    // 2024-03-05 07:05:00 UTC is a window start. Two 60 s intervals in it, one in the next.
    let t = 1_709_622_300;
    sink.write(interval(t, t + 60, 1000, 3)).await.unwrap();
    sink.write(interval(t + 60, t + 120, 2000, 2))
        .await
        .unwrap();
    sink.write(interval(t + 300, t + 360, 3000, 1))
        .await
        .unwrap();
    sink.flush(tokio::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();

    let found = objects(&dir.join("archive"));
    let prefix = "AWSLogs/123456789010/vpcflowlogs/eu-west-1/2024/03/05/\
                  123456789010_vpcflowlogs_eu-west-1_fl-00000000000000001_";
    let keys: Vec<&String> = found.iter().map(|(key, _)| key).collect();
    assert_eq!(found.len(), 2, "{keys:?}");
    let lines = |text: &str| text.lines().count();
    let first = found.iter().find(|(k, _)| k.contains("T0705Z")).unwrap();
    let second = found.iter().find(|(k, _)| k.contains("T0710Z")).unwrap();
    for (key, text) in [first, second] {
        assert!(key.starts_with(prefix) && key.ends_with(".log.gz"), "{key}");
        assert_eq!(
            text.lines().next().unwrap(),
            RecordFormat::default().header_line()
        );
    }
    assert_eq!((lines(&first.1), lines(&second.1)), (1 + 5, 1 + 1));
    // Uploaded objects leave the spool.
    assert!(sink.spool.pending().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_is_closed_when_it_reaches_the_size_cap() {
    let dir = scratch("size");
    let url = ObjectUrl::parse(&format!("file://{}", dir.join("archive").display())).unwrap();
    // 1 KiB: every interval of 2000 varied records passes it on its own.
    let mut sink = ObjectStoreSink::start(
        &url,
        layout(&url),
        &options(&dir.join("spool"), 3600, 1024),
        renderer(),
    )
    .await
    .unwrap();
    let t = 1_709_622_000;
    for i in 0..4 {
        sink.write(interval(
            t + i * 10,
            t + i * 10 + 10,
            1000 + i as u16 * 2000,
            2000,
        ))
        .await
        .unwrap();
    }
    sink.flush(tokio::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let found = objects(&dir.join("archive"));
    let keys: Vec<&String> = found.iter().map(|(key, _)| key).collect();
    assert_eq!(found.len(), 4, "one object per interval: {keys:?}");
    let records: usize = found.iter().map(|(_, text)| text.lines().count() - 1).sum();
    assert_eq!(records, 8000);
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_left_in_the_spool_go_first_at_the_next_start() {
    let dir = scratch("restart");
    let spool_root = dir.join("spool");
    let url = ObjectUrl::parse(&format!("file://{}", dir.join("archive").display())).unwrap();
    let layout = layout(&url);
    // What a run that could not upload left behind.
    let spool = Spool::open(
        spool_root.join(spool_name(url.location(), &layout)),
        1 << 30,
    )
    .unwrap();
    let mut text = TextObject::new(&renderer());
    text.append(
        &renderer(),
        &interval(1_709_622_300, 1_709_622_360, 1, 1).records,
    )
    .unwrap();
    let key = layout.key(1_709_622_300, 0x1234abcd);
    spool.push(&key, 1, &text.finish().unwrap()).unwrap();
    drop(spool);

    let mut sink = ObjectStoreSink::start(
        &url,
        layout,
        &options(&spool_root, 300, 1 << 20),
        renderer(),
    )
    .await
    .unwrap();
    sink.flush(tokio::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let found = objects(&dir.join("archive"));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, key, "uploaded under the key it was given");
    assert!(sink.spool.pending().is_empty());
    // The metrics: the spool is empty, and the bytes written are the stored object's.
    let gauges = sink.spool_gauges().expect("an object sink has a spool");
    assert_eq!((gauges.bytes.get(), gauges.objects.get()), (0, 0));
    let stored = fs::metadata(dir.join("archive").join(&key)).unwrap().len();
    assert_eq!(sink.bytes_written().get(), stored);
    fs::remove_dir_all(&dir).unwrap();
}
