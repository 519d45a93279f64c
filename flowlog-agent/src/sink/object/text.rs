//! Text objects: gzip of a header line of field names, then the records exactly as the log
//! streams write them.

use std::io::{self, Write};

use flate2::{Compression, write::GzEncoder};

use crate::{record::FlowRecord, sink::LineRenderer};

pub struct TextObject {
    gzip: GzEncoder<Vec<u8>>,
    /// Rendered lines waiting for compression, reused between calls.
    scratch: Vec<u8>,
}

impl TextObject {
    pub fn new(renderer: &LineRenderer) -> Self {
        let mut object = TextObject {
            gzip: GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::default()),
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
        Ok(())
    }

    /// Compressed bytes so far (deflate may hold a few more KiB internally).
    pub fn size(&self) -> usize {
        self.gzip.get_ref().len() + self.scratch.len()
    }

    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.gzip.write_all(&self.scratch)?;
        self.gzip.finish()
    }
}
