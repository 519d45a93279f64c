//! IPv6 extension headers as the builder writes them.

use super::{IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING};

/// An IPv6 extension header, in the order the builder chains them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionHeader {
    /// Hop-by-hop options of this many bytes (a multiple of 8, 8..=2048).
    HopByHop(usize),
    /// A routing header of this many bytes (a multiple of 8, 8..=2048), with no segments left.
    Routing(usize),
    /// Destination options of this many bytes (a multiple of 8, 8..=2048).
    DestinationOptions(usize),
    /// A fragment header. `offset` is in 8-byte units (13 bits); `more` is the M flag. Headers
    /// after a non-first fragment's fragment header are not emitted, as on the wire.
    Fragment { offset: u16, more: bool },
    /// An authentication header of this many bytes (a multiple of 4, 12..=1024).
    Authentication(usize),
}

impl ExtensionHeader {
    pub(super) fn protocol(self) -> u8 {
        match self {
            Self::HopByHop(_) => IPPROTO_HOPOPTS,
            Self::Routing(_) => IPPROTO_ROUTING,
            Self::DestinationOptions(_) => IPPROTO_DSTOPTS,
            Self::Fragment { .. } => IPPROTO_FRAGMENT,
            Self::Authentication(_) => IPPROTO_AH,
        }
    }

    pub(super) fn is_non_first_fragment(self) -> bool {
        matches!(self, Self::Fragment { offset, .. } if offset != 0)
    }

    pub(super) fn write(self, next_header: u8, out: &mut Vec<u8>) {
        match self {
            Self::HopByHop(len) | Self::DestinationOptions(len) => {
                check_ext_len(self, len, 8, 8);
                out.extend([next_header, (len / 8 - 1) as u8]);
                write_skippable_options(len - 2, out);
            }
            Self::Routing(len) => {
                check_ext_len(self, len, 8, 8);
                // Routing type 253 is reserved for experiments (RFC 4727); with no segments
                // left a receiver ignores an unknown type.
                out.extend([next_header, (len / 8 - 1) as u8, 253, 0]);
                out.resize(out.len() + len - 4, 0);
            }
            Self::Fragment { offset, more } => {
                assert!(
                    offset < 1 << 13,
                    "fragment offset {offset} does not fit 13 bits"
                );
                let offset_flags = (offset << 3) | u16::from(more);
                out.extend([next_header, 0]);
                out.extend(offset_flags.to_be_bytes());
                out.extend(0x0000_4242u32.to_be_bytes()); // identification
            }
            Self::Authentication(len) => {
                check_ext_len(self, len, 4, 12);
                assert!(len <= 1024, "{self:?}: at most 1024 bytes");
                // Payload length in 4-byte units, minus 2 (RFC 4302).
                out.extend([next_header, (len / 4 - 2) as u8, 0, 0]);
                out.extend(0x0000_0100u32.to_be_bytes()); // SPI
                out.extend(1u32.to_be_bytes()); // sequence number
                out.resize(out.len() + len - 12, 0); // ICV
            }
        }
    }
}

fn check_ext_len(ext: ExtensionHeader, len: usize, unit: usize, min: usize) {
    assert!(
        len.is_multiple_of(unit) && (min..=2048).contains(&len),
        "{ext:?}: length must be a multiple of {unit} in {min}..=2048"
    );
}

/// Fills `len` bytes of an options header with an experimental option that receivers skip
/// (type 0x1e, RFC 4727), never with long padding, which Linux drops.
fn write_skippable_options(mut len: usize, out: &mut Vec<u8>) {
    while len > 0 {
        if len == 1 {
            out.push(0); // Pad1
            break;
        }
        let data = (len - 2).min(255);
        out.extend([0x1e, data as u8]);
        out.resize(out.len() + data, 0);
        len -= data + 2;
    }
}
