//! [`Frame`] over packet memory: direct packet access, bounds-checked against `data_end` in the
//! form the verifier tracks.

use aya_ebpf::programs::{TcContext, XdpContext};
use flowlog_ebpf::{headers::Header, parse::Frame};

/// Reads a header in place if `data + offset + T::LEN` does not pass `data_end`.
#[inline(always)]
fn header_at<'a, T: Header>(data: usize, data_end: usize, offset: usize) -> Option<&'a T> {
    let start = data + offset;
    if start + T::LEN > data_end {
        return None;
    }
    // SAFETY: the check above keeps the whole header inside packet memory, which stays valid and
    // unchanged for the rest of the program (nothing here moves or writes packet data after a
    // frame is made; `SkbFrame` is made again after `bpf_skb_pull_data`). `Header` types have
    // alignment 1 and accept every bit pattern.
    Some(unsafe { &*(start as *const T) })
}

pub struct XdpFrame {
    data: usize,
    data_end: usize,
    ingress_ifindex: u32,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        // SAFETY: `ctx.ctx` is the xdp_md the kernel passed to the program.
        let ingress_ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            ingress_ifindex,
        }
    }

    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        self.ingress_ifindex
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end - self.data
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        header_at(self.data, self.data_end, offset)
    }
}

/// GSO metadata of a socket buffer: `size` is 0 for an ordinary packet.
pub struct Gso {
    pub size: u32,
    pub segs: u32,
}

pub struct SkbFrame {
    data: usize,
    data_end: usize,
    len: u32,
    ifindex: u32,
    gso: Gso,
}

impl SkbFrame {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        // SAFETY: `ctx.skb.skb` is the __sk_buff the kernel passed to the program; these are
        // plain context reads the verifier rewrites into sk_buff field loads.
        let (ifindex, gso_size, gso_segs) = unsafe {
            let skb = ctx.skb.skb;
            ((*skb).ifindex, (*skb).gso_size, (*skb).gso_segs)
        };
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            len: ctx.len(),
            ifindex,
            gso: Gso {
                size: gso_size,
                segs: gso_segs,
            },
        }
    }

    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    #[inline(always)]
    pub fn gso(&self) -> Gso {
        Gso {
            size: self.gso.size,
            segs: self.gso.segs,
        }
    }

    /// Whether part of the packet lies outside the linear area direct access reaches.
    #[inline(always)]
    pub fn has_paged_data(&self) -> bool {
        (self.data_end - self.data) < self.len as usize
    }
}

impl Frame for SkbFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len as usize
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        header_at(self.data, self.data_end, offset)
    }
}
