//! Reading the agent's Prometheus endpoint from inside its namespace.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use crate::netns::{NetNs, in_netns};

/// Where the agent serves its metrics by default.
pub const METRICS_ADDRESS: &str = "127.0.0.1:9753";

/// The whole HTTP response to `GET path` from the agent's metrics port in `ns`.
pub fn scrape(ns: &NetNs, path: &str) -> String {
    in_netns(ns, || {
        let mut stream = TcpStream::connect(METRICS_ADDRESS).expect("connect to the metrics port");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .expect("namespace")
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
