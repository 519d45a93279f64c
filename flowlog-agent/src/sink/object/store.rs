//! Object-store URLs (`s3://`, `gs://`, `az://`, `file://`) and the `object_store` clients
//! behind them. Credentials, region and endpoint come the way `object_store` reads them (the
//! cloud's environment variables, instance credentials), plus non-secret options in the URL
//! query (`?endpoint=http://127.0.0.1:9000&allow_http=true&region=eu-west-1`).

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use object_store::{
    ObjectStore, RetryConfig, aws::AmazonS3Builder, aws::AmazonS3ConfigKey, azure::AzureConfigKey,
    azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder, gcp::GoogleConfigKey,
    local::LocalFileSystem,
};
use url::Url;

use crate::sink::secrets::{credential_variables, environment_variable, is_secret_option, redact};

/// The object-store schemes flowlog writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
    File,
}

/// A checked object-store sink URL. Its text without the query is how the sink is named in
/// logs; the query holds only non-secret options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    scheme: Scheme,
    /// Bucket (or container) and path, without the query: the sink's name.
    location: String,
    /// Path inside the bucket (or below the directory) before `AWSLogs/`.
    prefix: String,
    options: Vec<(String, String)>,
    url: Url,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectUrlError {
    #[error("sink {sink:?} is not a valid URL: {reason}")]
    Malformed { sink: String, reason: String },
    #[error("sink {sink:?}: {scheme}:// needs a bucket, as in {scheme}://my-bucket/prefix")]
    NoBucket { sink: String, scheme: String },
    #[error(
        "sink {sink:?}: file URLs take an absolute path, as in file:///var/lib/flowlog/archive"
    )]
    FileHost { sink: String },
    #[error("sink {sink:?}: unknown option {option:?} for {scheme}://")]
    UnknownOption {
        sink: String,
        option: String,
        scheme: String,
    },
    #[error(
        "sink {sink:?}: option {option:?} is a secret, and a command line or configuration file \
         is read by more people than secrets should be: set {variable} in the agent's environment \
         instead"
    )]
    SecretInUrl {
        sink: String,
        option: String,
        variable: String,
    },
    #[error(
        "sink {sink:?}: credentials in the URL are refused (a command line or configuration file \
         is read by more people than secrets should be); give them in the agent's environment: \
         {variables}"
    )]
    CredentialsInUrl {
        sink: String,
        variables: &'static str,
    },
    #[error("sink {sink:?}: option {option:?} is given twice")]
    DuplicateOption { sink: String, option: String },
    #[error("sink {sink:?}: file:// URLs take no options")]
    FileOptions { sink: String },
}

impl ObjectUrl {
    /// Whether `text` looks like an object-store URL (so its errors are about that).
    pub fn claims(text: &str) -> bool {
        ["s3://", "gs://", "az://", "file:"]
            .iter()
            .any(|prefix| text.starts_with(prefix))
    }

    pub fn parse(text: &str) -> Result<Self, ObjectUrlError> {
        // Errors show the sink with its secrets hidden.
        let sink = redact(text);
        let url = Url::parse(text).map_err(|e| ObjectUrlError::Malformed {
            sink: sink.clone(),
            reason: e.to_string(),
        })?;
        let scheme = match url.scheme() {
            "s3" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" => Scheme::Azure,
            "file" => Scheme::File,
            other => {
                return Err(ObjectUrlError::Malformed {
                    sink,
                    reason: format!("unknown scheme {other:?}"),
                });
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ObjectUrlError::CredentialsInUrl {
                sink,
                variables: credential_variables(scheme),
            });
        }
        let options: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let prefix = url.path().trim_matches('/').to_owned();
        if scheme == Scheme::File {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(ObjectUrlError::FileHost { sink });
            }
            if !options.is_empty() {
                return Err(ObjectUrlError::FileOptions { sink });
            }
        } else if url.host_str().is_none_or(str::is_empty) {
            return Err(ObjectUrlError::NoBucket {
                sink,
                scheme: url.scheme().to_owned(),
            });
        }
        for (i, (option, _)) in options.iter().enumerate() {
            match is_secret_option(scheme, option) {
                Some(false) => {}
                Some(true) => {
                    return Err(ObjectUrlError::SecretInUrl {
                        sink,
                        option: option.clone(),
                        variable: environment_variable(scheme, option).unwrap_or_default(),
                    });
                }
                None => {
                    return Err(ObjectUrlError::UnknownOption {
                        sink,
                        option: option.clone(),
                        scheme: url.scheme().to_owned(),
                    });
                }
            }
            if options[..i].iter().any(|(earlier, _)| earlier == option) {
                return Err(ObjectUrlError::DuplicateOption {
                    sink,
                    option: option.clone(),
                });
            }
        }
        let mut location = url.clone();
        location.set_query(None);
        let location = match scheme {
            // `file:///a/b/` and `file:///a/b` are one directory.
            Scheme::File => format!("file:///{prefix}"),
            _ => location.to_string().trim_end_matches('/').to_owned(),
        };
        Ok(ObjectUrl {
            scheme,
            location,
            prefix: if scheme == Scheme::File {
                String::new()
            } else {
                prefix
            },
            options,
            url,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The path before `AWSLogs/` inside the store.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sink's name: the URL without its query.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The directory of a `file://` sink.
    pub fn directory(&self) -> Option<PathBuf> {
        (self.scheme == Scheme::File).then(|| PathBuf::from(self.url.path()))
    }

    /// Builds the client. Each request gives up after a few quick tries: the uploader retries
    /// with its own backoff and spools, so one stuck request never holds the queue for
    /// minutes.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let mut bucket_url = self.url.clone();
        bucket_url.set_query(None);
        bucket_url.set_path("");
        let bucket_url = bucket_url.to_string();
        Ok(match self.scheme {
            Scheme::S3 => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_config("timeout".parse()?, "30s")
                    .with_config("connect_timeout".parse()?, "5s");
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse::<AmazonS3ConfigKey>()?, value);
                }
                Arc::new(builder.build()?)
            }
            Scheme::Gcs => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_config("timeout".parse()?, "30s")
                    .with_config("connect_timeout".parse()?, "5s");
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse::<GoogleConfigKey>()?, value);
                }
                Arc::new(builder.build()?)
            }
            Scheme::Azure => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_config("timeout".parse()?, "30s")
                    .with_config("connect_timeout".parse()?, "5s");
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse::<AzureConfigKey>()?, value);
                }
                Arc::new(builder.build()?)
            }
            Scheme::File => {
                let directory = PathBuf::from(self.url.path());
                std::fs::create_dir_all(&directory).map_err(|source| {
                    object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(source),
                    }
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(directory)?)
            }
        })
    }
}

impl fmt::Display for ObjectUrl {
    /// The full URL, options included: it holds no secret (they are refused), and is
    /// redacted all the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.options.is_empty() {
            f.write_str(&self.location)
        } else {
            let full = format!("{}?{}", self.location, self.url.query().unwrap_or(""));
            f.write_str(&redact(&full))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let s3 = ObjectUrl::parse("s3://bucket/some/prefix/").unwrap();
        assert_eq!((s3.scheme(), s3.prefix()), (Scheme::S3, "some/prefix"));
        assert_eq!(s3.location(), "s3://bucket/some/prefix");
        let bare = ObjectUrl::parse("s3://bucket").unwrap();
        assert_eq!(bare.prefix(), "");
        assert_eq!(ObjectUrl::parse("gs://b/p").unwrap().scheme(), Scheme::Gcs);
        assert_eq!(
            ObjectUrl::parse("az://c/p").unwrap().scheme(),
            Scheme::Azure
        );
        let file = ObjectUrl::parse("file:///var/lib/flowlog/archive/").unwrap();
        assert_eq!(file.scheme(), Scheme::File);
        assert_eq!(file.prefix(), "");
        assert_eq!(file.location(), "file:///var/lib/flowlog/archive");
        assert_eq!(
            file.directory(),
            Some(PathBuf::from("/var/lib/flowlog/archive/"))
        );
        let with_options =
            ObjectUrl::parse("s3://b/p?endpoint=http://127.0.0.1:9000&allow_http=true").unwrap();
        assert_eq!(with_options.location(), "s3://b/p");
        assert_eq!(
            with_options.to_string(),
            "s3://b/p?endpoint=http://127.0.0.1:9000&allow_http=true"
        );
    }

    #[test]
    fn bad_urls_are_refused_naming_the_sink_and_the_fault() {
        let error = |text: &str| ObjectUrl::parse(text).unwrap_err().to_string();
        assert_eq!(
            error("s3:///prefix"),
            "sink \"s3:///prefix\": s3:// needs a bucket, as in s3://my-bucket/prefix"
        );
        assert!(error("file://relative/dir").contains("absolute path"));
        assert!(error("s3://b/p?colour=blue").contains("unknown option \"colour\""));
        let secret = error("s3://b/p?secret_access_key=abc");
        assert!(
            secret.contains("\"secret_access_key\" is a secret")
                && secret.contains("set AWS_SECRET_ACCESS_KEY"),
            "{secret}"
        );
        assert!(
            !secret.contains("abc"),
            "the value is not repeated: {secret}"
        );
        assert!(error("s3://b/p?aws_session_token=x").contains("is a secret"));
        assert!(error("s3://bu cket/x").contains("not a valid URL"));
    }
}
