//! Reading records back as a VPC Flow Logs reader would: split the default (version 2) format on
//! single spaces. Written apart from the agent's renderer, so a mistake there shows here.

use std::{collections::BTreeMap, net::IpAddr};

/// One line of the default format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u8,
    pub account_id: String,
    pub interface: String,
    /// `None` for NODATA and SKIPDATA.
    pub flow: Option<FlowTuple>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub start: u64,
    pub end: u64,
    pub action: String,
    pub log_status: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

/// Parses one line of the default format; panics with the line on anything unexpected.
pub fn parse_line(line: &str) -> Record {
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 14, "not a default-format record: {line:?}");
    let number = |i: usize| -> Option<u64> {
        match fields[i] {
            "-" => None,
            text => Some(
                text.parse()
                    .unwrap_or_else(|_| panic!("field {i} of {line:?}")),
            ),
        }
    };
    let flow = match fields[3] {
        "-" => {
            assert!(fields[4..8].iter().all(|f| *f == "-"), "{line:?}");
            None
        }
        _ => Some(FlowTuple {
            src: fields[3]
                .parse()
                .unwrap_or_else(|_| panic!("srcaddr of {line:?}")),
            dst: fields[4]
                .parse()
                .unwrap_or_else(|_| panic!("dstaddr of {line:?}")),
            src_port: number(5).expect("srcport") as u16,
            dst_port: number(6).expect("dstport") as u16,
            protocol: number(7).expect("protocol") as u8,
        }),
    };
    Record {
        version: fields[0].parse().expect("version"),
        account_id: fields[1].to_owned(),
        interface: fields[2].to_owned(),
        flow,
        packets: number(8),
        bytes: number(9),
        start: number(10).expect("start"),
        end: number(11).expect("end"),
        action: fields[12].to_owned(),
        log_status: fields[13].to_owned(),
    }
}

pub fn parse_lines(text: &str) -> Vec<Record> {
    text.lines().map(parse_line).collect()
}

/// Packets and bytes summed over the records of each (interface, flow).
pub fn totals(records: &[Record]) -> BTreeMap<(String, FlowTuple), (u64, u64)> {
    let mut totals = BTreeMap::new();
    for record in records {
        if let Some(flow) = record.flow {
            let entry = totals
                .entry((record.interface.clone(), flow))
                .or_insert((0, 0));
            entry.0 += record.packets.expect("OK records have packets");
            entry.1 += record.bytes.expect("OK records have bytes");
        }
    }
    totals
}

/// The default format plus `reject-reason` (version 8): what the policy tests write.
pub const FORMAT_WITH_REASON: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${reject-reason}";

/// Parses lines of [`FORMAT_WITH_REASON`]: each record and its reject reason.
pub fn parse_records_with_reason(text: &str) -> Vec<(Record, String)> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (head, reason) = line.rsplit_once(' ').expect("15 fields");
            let mut record = parse_line(&head.replacen("8 ", "2 ", 1));
            record.version = 8;
            (record, reason.to_owned())
        })
        .collect()
}

/// (flow, action, reason) -> (packets, bytes), summed over records.
pub type VerdictTotals = BTreeMap<(FlowTuple, String, String), (u64, u64)>;

/// Packets and bytes of each flow, action and reject reason over `records` (of every interface).
pub fn verdict_totals(records: &[(Record, String)]) -> VerdictTotals {
    let mut totals = VerdictTotals::new();
    for (record, reason) in records {
        let Some(flow) = record.flow else { continue };
        assert_eq!(record.version, 8);
        let entry = totals
            .entry((flow, record.action.clone(), reason.clone()))
            .or_default();
        entry.0 += record.packets.expect("packets");
        entry.1 += record.bytes.expect("bytes");
    }
    totals
}
