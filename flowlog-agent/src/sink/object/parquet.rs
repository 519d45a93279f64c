//! Parquet objects: one column per field of the format, named with underscores, physical types
//! as AWS writes them (INT32, INT64, STRING). `-` is a null in numeric columns and the string
//! `-` in string columns; snappy compression, which every common reader supports.
//!
//! Written for readers that know only Parquet 1.0 (the `parquet` package VPC-flow-log tooling
//! in Python uses, which decodes PLAIN and PLAIN_DICTIONARY data pages, v1 only): writer
//! version 1.0 (v1 data pages) and PLAIN values. The parquet crate writes dictionaries only as
//! RLE_DICTIONARY pages (not configurable in version 60), which those readers refuse, so
//! dictionaries are off; snappy takes most of what they saved on repetitive flow columns.

use std::sync::Arc;

use bytes::Bytes;
use parquet::{
    basic::{Compression, Encoding, LogicalType, Repetition, Type as PhysicalType},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    errors::ParquetError,
    file::{
        properties::{WriterProperties, WriterVersion},
        writer::SerializedFileWriter,
    },
    schema::types::{Type, TypePtr},
};

use crate::{
    format::{ColumnType, Field, FieldValue, RecordFormat},
    record::FlowRecord,
    sink::LineRenderer,
};

/// Rows buffered before they are written as one row group: big enough for efficient scans,
/// small enough to bound the memory an object holds before it is encoded.
const ROW_GROUP_ROWS: usize = 128 * 1024;

pub struct ParquetObject {
    writer: SerializedFileWriter<Vec<u8>>,
    fields: Vec<Field>,
    columns: Vec<ColumnBuffer>,
    rows: usize,
}

/// One column's values for the current row group. `defined` holds the definition levels
/// (1 = value, 0 = null) of the optional columns.
enum ColumnBuffer {
    Int32 {
        values: Vec<i32>,
        defined: Vec<i16>,
    },
    Int64 {
        values: Vec<i64>,
        defined: Vec<i16>,
    },
    /// All values back to back in `bytes`, each ending at the matching offset: no allocation
    /// per value.
    Text {
        bytes: Vec<u8>,
        ends: Vec<usize>,
    },
}

impl ParquetObject {
    pub fn new(format: &RecordFormat) -> Result<Self, ParquetError> {
        let schema = schema(format)?;
        let properties = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_dictionary_enabled(false)
            .set_encoding(Encoding::PLAIN)
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("flowlog ", env!("CARGO_PKG_VERSION")).to_owned())
            .build();
        let writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties))?;
        let columns = format
            .fields()
            .iter()
            .map(|field| match field.column_type() {
                ColumnType::Int32 => ColumnBuffer::Int32 {
                    values: Vec::new(),
                    defined: Vec::new(),
                },
                ColumnType::Int64 => ColumnBuffer::Int64 {
                    values: Vec::new(),
                    defined: Vec::new(),
                },
                ColumnType::String => ColumnBuffer::Text {
                    bytes: Vec::new(),
                    ends: Vec::new(),
                },
            })
            .collect();
        Ok(ParquetObject {
            writer,
            fields: format.fields().to_vec(),
            columns,
            rows: 0,
        })
    }

    pub fn append(
        &mut self,
        renderer: &LineRenderer,
        records: &[FlowRecord],
    ) -> Result<(), ParquetError> {
        for record in records {
            for (field, column) in self.fields.iter().zip(&mut self.columns) {
                let value = renderer.format.value(*field, record, &renderer.metadata);
                column.push(value);
            }
            self.rows += 1;
            if self.rows >= ROW_GROUP_ROWS {
                self.write_row_group()?;
            }
        }
        Ok(())
    }

    /// Bytes written so far plus a rough figure for the buffered rows, for the size cap.
    pub fn size(&self) -> usize {
        let buffered: usize = self.columns.iter().map(ColumnBuffer::encoded_guess).sum();
        self.writer.bytes_written() + buffered
    }

    pub fn finish(mut self) -> Result<Vec<u8>, ParquetError> {
        if self.rows > 0 {
            self.write_row_group()?;
        }
        self.writer.into_inner()
    }

    fn write_row_group(&mut self) -> Result<(), ParquetError> {
        let mut group = self.writer.next_row_group()?;
        for column in &mut self.columns {
            let mut writer = group
                .next_column()?
                .ok_or_else(|| ParquetError::General("schema has fewer columns".into()))?;
            match column {
                ColumnBuffer::Int32 { values, defined } => {
                    writer
                        .typed::<Int32Type>()
                        .write_batch(values, Some(defined), None)?;
                    values.clear();
                    defined.clear();
                }
                ColumnBuffer::Int64 { values, defined } => {
                    writer
                        .typed::<Int64Type>()
                        .write_batch(values, Some(defined), None)?;
                    values.clear();
                    defined.clear();
                }
                ColumnBuffer::Text { bytes, ends } => {
                    let all = Bytes::from(std::mem::take(bytes));
                    let mut start = 0;
                    let values: Vec<ByteArray> = ends
                        .iter()
                        .map(|&end| {
                            let value = ByteArray::from(all.slice(start..end));
                            start = end;
                            value
                        })
                        .collect();
                    let defined = vec![1i16; values.len()];
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defined), None)?;
                    ends.clear();
                }
            }
            writer.close()?;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }
}

impl ColumnBuffer {
    fn push(&mut self, value: FieldValue<'_>) {
        match self {
            ColumnBuffer::Int32 { values, defined } => match value {
                FieldValue::Int(n) => {
                    values.push(n as i32);
                    defined.push(1);
                }
                _ => defined.push(0),
            },
            ColumnBuffer::Int64 { values, defined } => match value {
                FieldValue::Int(n) => {
                    values.push(n as i64);
                    defined.push(1);
                }
                _ => defined.push(0),
            },
            ColumnBuffer::Text { bytes, ends } => {
                value.write_to(bytes);
                ends.push(bytes.len());
            }
        }
    }

    /// Encoded size is unknown until the row group is written; dictionary and snappy usually
    /// shrink flow columns several times, so a quarter of the raw size is the guess.
    fn encoded_guess(&self) -> usize {
        match self {
            ColumnBuffer::Int32 { values, .. } => values.len(),
            ColumnBuffer::Int64 { values, .. } => values.len() * 2,
            ColumnBuffer::Text { bytes, .. } => bytes.len() / 4,
        }
    }
}

/// The Parquet schema of a format: every column optional, since numeric `-` values are nulls.
pub fn schema(format: &RecordFormat) -> Result<TypePtr, ParquetError> {
    let columns = format
        .fields()
        .iter()
        .map(|field| {
            let builder = match field.column_type() {
                ColumnType::Int32 => {
                    Type::primitive_type_builder(field.column_name(), PhysicalType::INT32)
                }
                ColumnType::Int64 => {
                    Type::primitive_type_builder(field.column_name(), PhysicalType::INT64)
                }
                ColumnType::String => {
                    Type::primitive_type_builder(field.column_name(), PhysicalType::BYTE_ARRAY)
                        .with_logical_type(Some(LogicalType::String))
                }
            };
            builder
                .with_repetition(Repetition::OPTIONAL)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(
        Type::group_type_builder("schema")
            .with_fields(columns)
            .build()?,
    ))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;
    use crate::record::{Direction, Flow, Metadata, RecordKind, Verdict};

    /// Fields of versions 7 to 11 are columns with AWS's names and types.
    #[test]
    fn the_fields_of_versions_7_to_11_are_columns_of_aws_types() {
        let format: RecordFormat = "${ecs-task-id} ${resource-id} ${encryption-status} \
                                    ${asg-tag-2} ${interface-type} ${next-hop-interface-type}"
            .parse()
            .unwrap();
        let schema = schema(&format).unwrap();
        let columns: Vec<(&str, PhysicalType)> = schema
            .get_fields()
            .iter()
            .map(|f| (f.name(), f.get_physical_type()))
            .collect();
        use PhysicalType::{BYTE_ARRAY as S, INT32 as I};
        assert_eq!(
            columns,
            [
                ("ecs_task_id", S),
                ("resource_id", S),
                ("encryption_status", I),
                ("asg_tag_2", S),
                ("interface_type", S),
                ("next_hop_interface_type", S),
            ]
        );
    }

    /// Every page is a v1 page of PLAIN values (levels RLE): what Parquet-1.0-only readers
    /// decode.
    #[test]
    fn objects_use_only_parquet_1_0_encodings() {
        let format = RecordFormat::default();
        let renderer = LineRenderer::new(
            Arc::new(format.clone()),
            Arc::new(Metadata {
                account_id: Some("123456789010".into()),
                ..Metadata::default()
            }),
        );
        let records: Vec<FlowRecord> = (0..5000u32)
            .map(|i| FlowRecord {
                interface: Arc::from(format!("eth{}", i % 4)),
                ifindex: 2 + i % 4,
                interface_type: None,
                start: 1_700_000_000,
                end: 1_700_000_060,
                kind: if i % 100 == 0 {
                    RecordKind::NoData
                } else {
                    RecordKind::Flow(Flow {
                        direction: Direction::Ingress,
                        src_addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)),
                        dst_addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                        src_port: (i % 60000) as u16,
                        dst_port: 443,
                        protocol: 6,
                        packets: u64::from(i),
                        bytes: u64::from(i) * 100,
                        verdict: Verdict::Accept,
                        tcp_flags: 19,
                        drop_reason: None,
                    })
                },
            })
            .collect();
        let mut object = ParquetObject::new(&format).unwrap();
        object.append(&renderer, &records).unwrap();
        let bytes = Bytes::from(object.finish().unwrap());
        let reader = SerializedFileReader::new(bytes).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().version(), 1);
        assert_eq!(metadata.file_metadata().num_rows(), 5000);
        for group in metadata.row_groups() {
            for column in group.columns() {
                for encoding in column.encodings() {
                    assert!(
                        matches!(encoding, Encoding::PLAIN | Encoding::RLE),
                        "{}: {encoding:?}",
                        column.column_path()
                    );
                }
                assert_eq!(column.dictionary_page_offset(), None);
            }
        }
    }
}
