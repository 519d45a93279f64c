//! Text objects: gzip of a header line of field names, then the records exactly as the log
//! streams write them.

use std::io::{self, Write};

use flate2::{Compression, write::GzEncoder};

use crate::{record::FlowRecord, sink::LineRenderer};

/// zlib level 3: measured on this project's bench machine (one core, 1M records) at 1.4M
/// records/s and 17.3 bytes/record, against 0.82M records/s and 14.6 bytes/record at the
/// default level 6. The >= 1M records/s encoder goal decides; see BENCHMARKS.md.
const GZIP_LEVEL: u32 = 3;

pub struct TextObject {
    gzip: GzEncoder<Vec<u8>>,
    /// Rendered lines waiting for compression, reused between calls.
    scratch: Vec<u8>,
}

impl TextObject {
    pub fn new(renderer: &LineRenderer) -> Self {
        let mut object = TextObject {
            gzip: GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::new(GZIP_LEVEL)),
            scratch: Vec::with_capacity(64 * 1024),
        };
        object
            .scratch
            .extend_from_slice(renderer.format.header_line().as_bytes());
        object.scratch.push(b'\n');
        object
    }

    pub fn append(&mut self, renderer: &LineRenderer, records: &[FlowRecord]) -> io::Result<()> {
        // Lines are rendered in chunks so the scratch buffer stays small for big intervals.
        for chunk in records.chunks(4096) {
            renderer.render(chunk, &mut self.scratch);
            self.gzip.write_all(&self.scratch)?;
            self.scratch.clear();
        }
        // A sync flush per interval (a few bytes; the dictionary is kept) makes `size` exact,
        // which the size cap needs: deflate otherwise holds up to tens of KiB of output.
        self.gzip.flush()
    }

    /// Compressed bytes so far.
    pub fn size(&self) -> usize {
        self.gzip.get_ref().len() + self.scratch.len()
    }

    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.gzip.write_all(&self.scratch)?;
        self.gzip.finish()
    }
}
