//! TCP flags in the VPC Flow Logs encoding.
//!
//! Only FIN, SYN and RST are reported, plus SYN-ACK as 18 (SYN 2 | 16). ACK alone, PSH, URG,
//! ECE and CWR give 0. The per-packet values are OR-ed over the interval.

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// The bit VPC Flow Logs uses to mark a SYN that also carried ACK.
pub const SYN_ACK_MARK: u8 = 0x10;

/// Converts the flags byte of a TCP header (offset 13) into the VPC Flow Logs encoding.
#[inline(always)]
pub const fn aws_flags(header_flags: u8) -> u8 {
    let reported = header_flags & (FIN | SYN | RST);
    if header_flags & (SYN | ACK) == (SYN | ACK) {
        reported | SYN_ACK_MARK
    } else {
        reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSH: u8 = 0x08;
    const URG: u8 = 0x20;
    const ECE: u8 = 0x40;
    const CWR: u8 = 0x80;

    #[test]
    fn encodes_as_the_reference_says() {
        assert_eq!(aws_flags(SYN), 2);
        assert_eq!(aws_flags(SYN | ACK), 18);
        assert_eq!(aws_flags(FIN | ACK), 1);
        assert_eq!(aws_flags(RST), 4);
        assert_eq!(aws_flags(RST | ACK), 4);
        assert_eq!(aws_flags(ACK), 0);
        assert_eq!(aws_flags(ACK | PSH | URG | ECE | CWR), 0);
        // A short connection: SYN, ACK, FIN one way is 3; SYN-ACK, FIN the other is 19.
        assert_eq!(aws_flags(SYN) | aws_flags(ACK) | aws_flags(FIN | ACK), 3);
        assert_eq!(aws_flags(SYN | ACK) | aws_flags(FIN | ACK), 19);
    }

    #[test]
    fn only_documented_values_are_possible() {
        let mut seen = [false; 256];
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                seen[(aws_flags(a) | aws_flags(b)) as usize] = true;
            }
        }
        let possible: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 18, 19, 22, 23];
        for (value, &was_seen) in seen.iter().enumerate() {
            assert_eq!(was_seen, possible.contains(&(value as u8)), "value {value}");
        }
    }
}
