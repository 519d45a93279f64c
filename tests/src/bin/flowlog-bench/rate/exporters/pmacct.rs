//! pmacctd with its `print` plugin.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::NetNs;

use crate::{
    rate::{coverage::Reported, flows::FlowTuple},
    support::{Context, Result, children_of},
};

use super::{Daemon, Outcome, STOP_TIMEOUT, wait_until_idle};

/// pmacctd with its `print` plugin, aggregating by 5-tuple.
pub struct Pmacctd {
    daemon: Daemon,
    csv: PathBuf,
}

impl Pmacctd {
    pub fn start(ns: &NetNs, ifname: &str, dir: &Path) -> Result<Self> {
        let csv = dir.join("pmacct.csv");
        let config = dir.join("pmacctd.conf");
        fs::write(
            &config,
            format!(
                "daemonize: false\n\
                 pcap_interface: {ifname}\n\
                 aggregate: src_host, dst_host, src_port, dst_port, proto\n\
                 plugins: print\n\
                 print_output: csv\n\
                 print_output_file: {}\n\
                 print_refresh_time: 3600\n\
                 plugin_pipe_size: 10240000\n\
                 plugin_buffer_size: 10240\n",
                csv.display()
            ),
        )
        .context("writing pmacctd's configuration")?;
        let mut command = ns.command("pmacctd");
        command.arg("-f").arg(&config);
        let mut daemon = Daemon::spawn("pmacctd", command, dir.join("pmacctd.log"))?;
        daemon.wait_for_log("link type is")?;
        Ok(Self { daemon, csv })
    }

    pub fn finish(mut self) -> Result<Outcome> {
        // The core process captures; it forks one process per plugin.
        let core = self.daemon.pid();
        let mut pids = vec![core];
        pids.extend(children_of(core));
        wait_until_idle("pmacctd", &pids)?;
        // SIGINT: the plugin writes what it holds, then everything exits.
        self.daemon.signal(libc::SIGINT);
        self.daemon.wait_exit()?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            if Instant::now() > deadline {
                return Err("pmacctd's plugin did not exit".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let text = fs::read_to_string(&self.csv)
            .context(format!("reading pmacct's output {}", self.csv.display()))?;
        let reported = parse_pmacct_csv(&text)?;
        let log = self.daemon.log();
        // "NOTICE ( default/core ): [fbrr0,0] received_packets=5000000 dropped_packets=164411"
        let capture = log
            .lines()
            .find_map(|line| Some(&line[line.find("received_packets=")?..]))
            .unwrap_or("statistics not logged")
            .trim()
            .to_owned();
        let missing = log.matches("Missing data detected").count();
        Ok(Outcome {
            reported,
            details: vec![format!(
                "pmacct: libpcap {capture}; the plugin queue reported missing data {missing} \
                 times"
            )],
        })
    }
}

/// pmacct's CSV: `SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES`.
fn parse_pmacct_csv(text: &str) -> Result<Reported> {
    let mut reported = Reported::default();
    for line in text.lines().skip(1).filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 7 {
            return Err(format!("not a pmacct CSV line: {line:?}"));
        }
        if fields[4] != "udp" {
            continue;
        }
        let parse_error = || format!("pmacct CSV line {line:?}");
        let (Ok(source), Ok(destination)) =
            (fields[0].parse::<Ipv4Addr>(), fields[1].parse::<Ipv4Addr>())
        else {
            continue;
        };
        reported.add(
            FlowTuple {
                source,
                destination,
                source_port: fields[2].parse().with_context(parse_error)?,
                destination_port: fields[3].parse().with_context(parse_error)?,
            },
            fields[5].parse().with_context(parse_error)?,
        );
    }
    Ok(reported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pmacct_csv() {
        let text = "SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES\n\
                    198.19.0.1,198.18.3.2,20000,9,udp,77,3542\n\
                    198.19.0.1,198.18.3.2,20000,9,udp,3,138\n\
                    198.18.3.1,198.18.3.2,0,0,icmp,1,84\n";
        let reported = parse_pmacct_csv(text).unwrap();
        let tuple = FlowTuple {
            source: Ipv4Addr::new(198, 19, 0, 1),
            destination: Ipv4Addr::new(198, 18, 3, 2),
            source_port: 20000,
            destination_port: 9,
        };
        assert_eq!(reported.packets.get(&tuple), Some(&80));
        assert_eq!(reported.packets.len(), 1);
        assert!(parse_pmacct_csv("header\n1,2,3\n").is_err());
    }
}
