//! Datapath statistics: packets the programs saw but did not count as flows.
//!
//! Kept in a per-CPU array indexed by [`Stat`]; the counters only grow (the agent reports
//! differences), so reading them while programs update them loses nothing.

/// One slot of the statistics map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stat {
    /// Frames whose EtherType (after any VLAN tags) is not IPv4 or IPv6: ARP, LLDP, ...
    NonIp = 0,
    /// IP frames too short for their headers or with inconsistent header fields. They are passed
    /// on untouched (the kernel's own checks drop them) and never create a flow.
    Malformed = 1,
    /// Packets of excluded traffic (`--exclude` and the defaults: DHCP, instance metadata):
    /// subject to the policy but not logged, and holding no flow entry.
    Excluded = 2,
}

impl Stat {
    /// Number of slots in the statistics map.
    pub const COUNT: u32 = 3;
    pub const ALL: [Stat; Self::COUNT as usize] = [Stat::NonIp, Stat::Malformed, Stat::Excluded];
}

impl TryFrom<u32> for Stat {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            0 => Ok(Self::NonIp),
            1 => Ok(Self::Malformed),
            2 => Ok(Self::Excluded),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_has_its_own_slot() {
        for (slot, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as u32, slot as u32);
            assert_eq!(Stat::try_from(slot as u32), Ok(*stat));
        }
        assert_eq!(Stat::try_from(Stat::COUNT), Err(Stat::COUNT));
    }
}
