//! The CloudWatch Logs client, built the standard AWS way by the official SDK, and what its
//! errors mean for delivery.
//!
//! Credentials come from the SDK's default chain: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the shared config and credentials files and
//! `AWS_PROFILE`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: EKS/IRSA),
//! the ECS container endpoint and EC2 instance metadata. The endpoint: `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`
//! or `AWS_ENDPOINT_URL` (or the profile's), else the region's. The SDK signs every request;
//! its own retries are off, since the delivery loop retries with its backoff and counts every
//! attempt.

use std::time::Duration;

use aws_config::{
    BehaviorVersion, Region, meta::region::RegionProviderChain, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_cloudwatchlogs::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
};

/// How long a connection may take to open, and one call to complete (a call carries up to a
/// megabyte).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The client for the flow log's region: the SDK's region (`AWS_REGION`, the profile's), else
/// the flow log's `region`, else the instance's (metadata service). Without any, an error.
pub async fn build(flow_log_region: Option<&str>) -> Result<Client, String> {
    let mut chain = RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(aws_config::profile::ProfileFileRegionProvider::new());
    if let Some(region) = flow_log_region {
        chain = chain.or_else(Region::new(region.to_owned()));
    }
    let chain = chain.or_else(aws_config::imds::region::ImdsRegionProvider::builder().build());
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(chain)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(CALL_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        return Err(
            "no AWS region: set AWS_REGION (or a profile's region), or the flow log's \
                    region (--region, metadata region)"
                .to_owned(),
        );
    }
    Ok(Client::new(&config))
}

/// What an answer (or its absence) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    /// `ResourceNotFoundException`: the log group or stream does not exist.
    NotFound,
    /// `ResourceAlreadyExistsException` (creating what exists).
    AlreadyExists,
    /// The credentials may not do this (`AccessDeniedException`).
    AccessDenied,
    /// The credentials are refused, expired, or missing.
    Credentials,
    /// `InvalidParameterException`: this request can never succeed as it is.
    InvalidParameter,
    /// `DataAlreadyAcceptedException`: this batch was accepted before.
    AlreadyAccepted,
    /// Throttling, a server error, no answer: trying again later may succeed.
    Transient,
}

/// Classifies an SDK error by the service's error code, or by its kind when there was no
/// answer.
pub fn diagnose<E, R>(error: &SdkError<E, R>) -> Diagnosis
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = error.as_service_error() {
        return match service.code().unwrap_or_default() {
            "ResourceNotFoundException" => Diagnosis::NotFound,
            "ResourceAlreadyExistsException" => Diagnosis::AlreadyExists,
            "AccessDeniedException" | "AccessDenied" => Diagnosis::AccessDenied,
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken" => Diagnosis::Credentials,
            "InvalidParameterException" | "ValidationException" => Diagnosis::InvalidParameter,
            "DataAlreadyAcceptedException" => Diagnosis::AlreadyAccepted,
            // Throttling, ServiceUnavailable, LimitExceeded, OperationAborted, a sequence
            // token (ignored since 2023), anything new: waiting does no harm.
            _ => Diagnosis::Transient,
        };
    }
    let text = DisplayErrorContext(error).to_string();
    if text.contains("credentials")
        && (text.contains("no credentials")
            || text.contains("not loaded")
            || text.contains("CredentialsNotLoaded"))
    {
        Diagnosis::Credentials
    } else {
        Diagnosis::Transient
    }
}

/// The error in one line, with the cause chain (never the credentials: the SDK does not put
/// them in errors).
pub fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DisplayErrorContext(error).to_string()
}
