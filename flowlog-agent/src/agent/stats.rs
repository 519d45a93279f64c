//! The datapath's statistics (non-IP, malformed, excluded packets) are running totals, kept
//! across agents in pinned maps; each interval reports what was counted since the last.

use std::collections::BTreeMap;

use flowlog_common::{flow::PacketCount, stats::Stat};

use super::AgentError;
use crate::datapath::Datapath;

/// Turns the datapath's running totals into per-interval differences.
pub(super) struct StatsDelta {
    previous: BTreeMap<Stat, PacketCount>,
}

impl StatsDelta {
    /// Starts from what earlier agents reported (pinned), or else from the totals now.
    pub(super) fn starting_from(datapath: &Datapath) -> Result<Self, AgentError> {
        let previous = match datapath.stats_reported()? {
            Some(reported) => reported,
            None => datapath.stats()?,
        };
        Ok(Self { previous })
    }

    /// What was counted since the last call; the new totals are recorded in the datapath as
    /// reported.
    pub(super) fn update(&mut self, datapath: &mut Datapath) -> BTreeMap<Stat, PacketCount> {
        let Ok(now) = datapath.stats() else {
            return BTreeMap::new();
        };
        let delta = now
            .iter()
            .map(|(stat, count)| {
                let before = self.previous.get(stat).copied().unwrap_or_default();
                let diff = PacketCount {
                    packets: count.packets.saturating_sub(before.packets),
                    bytes: count.bytes.saturating_sub(before.bytes),
                };
                (*stat, diff)
            })
            .collect();
        if let Err(error) = datapath.set_stats_reported(&now) {
            tracing::warn!(%error, "cannot record the statistics reported (a restart may miss some)");
        }
        self.previous = now;
        delta
    }
}
