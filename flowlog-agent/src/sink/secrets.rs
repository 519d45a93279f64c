//! Secrets in sink URLs. A command line and a configuration file are read by more people than
//! credentials should be, so sink URLs may not carry any: credentials in the userinfo
//! (`s3://KEY:SECRET@bucket`) and secret-bearing options (`?secret_access_key=`,
//! `?account_key=`, ...) are refused, naming the environment variable to use instead.
//!
//! Every place a sink URL is shown (log lines, metrics labels, `check`, error messages) goes
//! through [`redact`], and whether an option is secret is decided in one place,
//! [`is_secret_option`], by the option's meaning in `object_store` (all its spellings parse to
//! one key). Options are secret unless listed as plain, so an option a newer `object_store`
//! adds is treated as a secret until it is looked at (a unit test walks every key).

use object_store::{
    aws::AmazonS3ConfigKey, azure::AzureConfigKey, client::ClientConfigKey, gcp::GoogleConfigKey,
};

use super::object::Scheme;

/// What replaces a secret in anything shown.
pub const REDACTED: &str = "***";

/// Whether `option` (any spelling `object_store` accepts) carries a secret for `scheme`;
/// `None` if it is no option of that store.
pub fn is_secret_option(scheme: Scheme, option: &str) -> Option<bool> {
    let secret = match scheme {
        Scheme::S3 => {
            use AmazonS3ConfigKey as K;
            match option.parse::<K>().ok()? {
                K::Client(client) => !plain_client_option(client),
                // object_store does not export the encryption key type: by canonical name.
                key @ K::Encryption(_) => !matches!(
                    key.as_ref(),
                    "aws_server_side_encryption"
                        | "aws_sse_kms_key_id"
                        | "aws_sse_bucket_key_enabled"
                ),
                key => !matches!(
                    key,
                    K::Region
                        | K::DefaultRegion
                        | K::Bucket
                        | K::Endpoint
                        | K::S3Endpoint
                        | K::ImdsV1Fallback
                        | K::VirtualHostedStyleRequest
                        | K::UnsignedPayload
                        | K::Checksum
                        | K::MetadataEndpoint
                        | K::ContainerAuthorizationTokenFile
                        | K::WebIdentityTokenFile
                        | K::RoleArn
                        | K::RoleSessionName
                        | K::StsEndpoint
                        | K::CopyIfNotExists
                        | K::ConditionalPut
                        | K::SkipSignature
                        | K::DisableTagging
                        | K::DisableBulkDelete
                        | K::S3Express
                        | K::RequestPayer
                ),
            }
        }
        Scheme::Gcs => {
            use GoogleConfigKey as K;
            match option.parse::<K>().ok()? {
                K::Client(client) => !plain_client_option(client),
                key => !matches!(
                    key,
                    K::ServiceAccount
                        | K::Bucket
                        | K::BaseUrl
                        | K::ApplicationCredentials
                        | K::SkipSignature
                ),
            }
        }
        Scheme::Azure => {
            use AzureConfigKey as K;
            match option.parse::<K>().ok()? {
                K::Client(client) => !plain_client_option(client),
                key => !matches!(
                    key,
                    K::AccountName
                        | K::ClientId
                        | K::AuthorityId
                        | K::AuthorityHost
                        | K::UseEmulator
                        | K::Endpoint
                        | K::UseFabricEndpoint
                        | K::MsiEndpoint
                        | K::ObjectId
                        | K::MsiResourceId
                        | K::FederatedTokenFile
                        | K::UseAzureCli
                        | K::SkipSignature
                        | K::ContainerName
                        | K::DisableTagging
                        | K::FabricTokenServiceUrl
                        | K::FabricWorkloadHost
                        | K::FabricClusterIdentifier
                        | K::CredentialType
                ),
            }
        }
        Scheme::File => return None,
    };
    Some(secret)
}

/// HTTP client options that carry no secret (a proxy URL may hold a password).
fn plain_client_option(key: ClientConfigKey) -> bool {
    use ClientConfigKey as K;
    matches!(
        key,
        K::AllowHttp
            | K::AllowInvalidCertificates
            | K::NoSystemCertificates
            | K::ConnectTimeout
            | K::DefaultContentType
            | K::Http1Only
            | K::Http2KeepAliveInterval
            | K::Http2KeepAliveTimeout
            | K::Http2KeepAliveWhileIdle
            | K::Http2MaxFrameSize
            | K::Http2Only
            | K::PoolIdleTimeout
            | K::PoolMaxIdlePerHost
            | K::ProxyCaCertificate
            | K::ProxyExcludes
            | K::Timeout
            | K::UserAgent
            | K::RandomizeAddresses
            | K::ReadTimeout
    )
}

/// The environment variable the store reads `option` from (`AWS_SECRET_ACCESS_KEY`).
pub fn environment_variable(scheme: Scheme, option: &str) -> Option<String> {
    let (canonical, prefix) = match scheme {
        Scheme::S3 => (
            option
                .parse::<AmazonS3ConfigKey>()
                .ok()?
                .as_ref()
                .to_owned(),
            "aws_",
        ),
        Scheme::Gcs => (
            option.parse::<GoogleConfigKey>().ok()?.as_ref().to_owned(),
            "google_",
        ),
        Scheme::Azure => (
            option.parse::<AzureConfigKey>().ok()?.as_ref().to_owned(),
            "azure_",
        ),
        Scheme::File => return None,
    };
    let name = if canonical.starts_with(prefix) {
        canonical
    } else {
        format!("{prefix}{canonical}")
    };
    Some(name.to_ascii_uppercase())
}

/// Where each store takes credentials from instead of the URL.
pub fn credential_variables(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::S3 => {
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or instance credentials"
        }
        Scheme::Gcs => "GOOGLE_SERVICE_ACCOUNT (a key file's path), or instance credentials",
        Scheme::Azure => {
            "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or AZURE_CLIENT_ID with AZURE_CLIENT_SECRET), or managed identity"
        }
        Scheme::File => "nothing: a local directory needs no credentials",
    }
}

/// The sink URL `text` fit to be shown: credentials in the userinfo become `***`, and so does
/// the value of every query option not known to be plain (a misspelt secret option included).
/// Text that is not a URL is returned as it is.
pub fn redact(text: &str) -> String {
    let Some((scheme_text, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let scheme = match scheme_text {
        "s3" => Some(Scheme::S3),
        "gs" => Some(Scheme::Gcs),
        "az" => Some(Scheme::Azure),
        _ => None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = format!("{scheme_text}://");
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if !plain_query_option(scheme_text, scheme, key) => {
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn plain_query_option(scheme_text: &str, scheme: Option<Scheme>, key: &str) -> bool {
    match scheme {
        Some(scheme) => is_secret_option(scheme, key) == Some(false),
        None if scheme_text.starts_with("ipfix+") => super::ipfix::OPTIONS.contains(&key),
        None => false,
    }
}

#[cfg(test)]
mod tests;
