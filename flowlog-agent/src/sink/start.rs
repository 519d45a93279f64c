//! Sinks build and check themselves: [`SinkSpec::start`] makes the sink a destination names and
//! runs it behind the delivery driver (`run`, and a reload); [`SinkSpec::health_check`] says
//! whether it could work here without starting it or writing a record (`check`). Neither
//! caller matches on kinds of sink.

use std::path::Path;

use super::{
    CloudWatchSink, IpfixSink, LineRenderer, LogStreamSink, ObjectStoreSink, SinkHandle, SinkSpec,
    StartError, StdoutSink,
    cloudwatch::CloudWatchOptions,
    ipfix,
    object::{ArchiveOptions, KeyLayout, ObjectUrl},
    spawn,
};
use crate::values::TrafficType;

/// What a sink needs of the flow log it writes for.
pub struct SinkContext {
    /// The flow log's name (its id, or `cli`): names a CloudWatch sink's spool.
    pub flow_log: String,
    /// Renders the flow log's records in its format, with its metadata.
    pub renderer: LineRenderer,
    /// Log streams are named after it (`eth0-all.log`).
    pub traffic_type: TrafficType,
    pub archive: ArchiveOptions,
    /// Where this flow log's objects go in a store.
    pub key_layout: Box<dyn Fn(&ObjectUrl) -> KeyLayout + Send + Sync>,
}

/// Whether a sink could work here: a line for `check` either way.
pub type Health = Result<String, String>;

impl SinkSpec {
    /// Builds the sink and starts it as its own task behind the delivery driver. An object
    /// store that refuses (no such bucket, refused credentials) refuses the start; one that
    /// does not answer is spooled for.
    pub async fn start(&self, context: &SinkContext) -> Result<SinkHandle, StartError> {
        let renderer = &context.renderer;
        let log_streams = |directory: &Path, renderer: LineRenderer| {
            let name = self.to_string();
            LogStreamSink::new(
                directory.to_owned(),
                context.traffic_type.file_name_part(),
                renderer,
            )
            .map(spawn)
            .map_err(|error| StartError::Io { sink: name, error })
        };
        Ok(match self {
            SinkSpec::Stdout => spawn(StdoutSink::new(renderer.clone())),
            SinkSpec::JsonStdout(envelope) => {
                spawn(StdoutSink::new(renderer.clone().with_envelope(*envelope)))
            }
            SinkSpec::LogStreams(directory) => log_streams(directory, renderer.clone())?,
            SinkSpec::JsonLogStreams(envelope, directory) => {
                log_streams(directory, renderer.clone().with_envelope(*envelope))?
            }
            SinkSpec::ObjectStore(url) => {
                let layout = (context.key_layout)(url);
                let sink =
                    ObjectStoreSink::start(url, layout, &context.archive, renderer.clone()).await?;
                spawn(sink)
            }
            SinkSpec::Ipfix(spec) => spawn(IpfixSink::new(spec.clone())),
            SinkSpec::CloudWatch(group) => {
                let options = CloudWatchOptions {
                    flow_log: &context.flow_log,
                    traffic_type: context.traffic_type.file_name_part(),
                    spool_dir: &context.archive.spool_dir,
                    spool_max_bytes: context.archive.spool_max_bytes,
                };
                spawn(CloudWatchSink::start(group, renderer.clone(), &options).await?)
            }
        })
    }

    /// Whether the sink could work here, learned without starting it: log directories can be
    /// created and written, an object store is configured and answers, a collector resolves
    /// (and over TCP accepts a connection).
    pub async fn health_check(&self, context: &SinkContext) -> Health {
        match self {
            SinkSpec::Stdout | SinkSpec::JsonStdout(_) => Ok("standard output".into()),
            SinkSpec::LogStreams(dir) | SinkSpec::JsonLogStreams(_, dir) => {
                let existing = dir.ancestors().find(|p| p.exists());
                let writable = existing.is_some_and(|p| {
                    let probe = p.join(format!(".flowlog-check-{}", std::process::id()));
                    let ok = std::fs::write(&probe, b"").is_ok();
                    let _ = std::fs::remove_file(&probe);
                    ok
                });
                if writable {
                    Ok(format!("{} can be written", dir.display()))
                } else {
                    Err(format!("{} cannot be created or written", dir.display()))
                }
            }
            SinkSpec::ObjectStore(url) => {
                match ObjectStoreSink::check(url, &(context.key_layout)(url)).await {
                    Ok(()) => Ok(
                        "configured, and the destination answered (or spooling covers it)".into(),
                    ),
                    Err(error) => Err(error.to_string()),
                }
            }
            SinkSpec::Ipfix(spec) => ipfix::probe(spec).await,
            SinkSpec::CloudWatch(group) => {
                CloudWatchSink::check(group, context.renderer.metadata.region.as_deref()).await
            }
        }
    }
}
