//! Every option the object_store builders accept is classified: the keys are walked through
//! their serde variant lists, so an option a newer object_store adds fails this test until it
//! is looked at.

use std::collections::BTreeMap;

use serde::{
    Deserializer,
    de::{DeserializeOwned, Error as _, Visitor, value::Error},
};

use super::*;

/// A deserializer that only records the variant names an enum asks for.
struct VariantNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for VariantNames<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::custom("only enums"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        *self.0 = variants;
        Err(Error::custom("names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(VariantNames(&mut names));
    assert!(!names.is_empty());
    names
}

/// Every key of `T` by variant name (`Client.ProxyUrl` for the nested ones), with its canonical
/// spelling.
fn keys<T: DeserializeOwned + AsRef<str>>() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in variants::<T>() {
        if let Ok(key) = serde_json::from_str::<T>(&format!("\"{name}\"")) {
            out.insert(name.to_string(), key.as_ref().to_owned());
            continue;
        }
        // A newtype variant: one key per variant of the enum inside, whose names serde lists
        // when asked for one it does not have (the type itself is not exported).
        let probe = serde_json::from_str::<T>(&format!("{{\"{name}\":\"?\"}}"));
        let message = probe.err().expect("no variant named ?").to_string();
        let listed = message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("{name}: {message}"))
            .1;
        let inner: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        assert!(!inner.is_empty(), "{message}");
        for inner_name in inner {
            let key: T = serde_json::from_str(&format!("{{\"{name}\":\"{inner_name}\"}}")).unwrap();
            out.insert(format!("{name}.{inner_name}"), key.as_ref().to_owned());
        }
    }
    out
}

const CLIENT_PLAIN: &[&str] = &[
    "AllowHttp",
    "AllowInvalidCertificates",
    "NoSystemCertificates",
    "ConnectTimeout",
    "DefaultContentType",
    "Http1Only",
    "Http2KeepAliveInterval",
    "Http2KeepAliveTimeout",
    "Http2KeepAliveWhileIdle",
    "Http2MaxFrameSize",
    "Http2Only",
    "PoolIdleTimeout",
    "PoolMaxIdlePerHost",
    "ProxyCaCertificate",
    "ProxyExcludes",
    "Timeout",
    "UserAgent",
    "RandomizeAddresses",
    "ReadTimeout",
];
const CLIENT_SECRET: &[&str] = &["ProxyUrl"];

/// Checks every key of one store against the expected split; returns how many were checked.
fn check<T: DeserializeOwned + AsRef<str>>(
    scheme: Scheme,
    secret: &[&str],
    plain: &[&str],
) -> usize {
    let all = keys::<T>();
    for (variant, canonical) in &all {
        let expected = match variant.strip_prefix("Client.") {
            Some(client) if CLIENT_SECRET.contains(&client) => true,
            Some(client) if CLIENT_PLAIN.contains(&client) => false,
            _ if secret.contains(&variant.as_str()) => true,
            _ if plain.contains(&variant.as_str()) => false,
            _ => panic!(
                "{scheme:?} option {variant} ({canonical}) is new in object_store: decide whether it \
                 carries a secret, then list it in is_secret_option and in this test"
            ),
        };
        assert_eq!(
            is_secret_option(scheme, canonical),
            Some(expected),
            "{scheme:?} {variant} ({canonical})"
        );
        if expected {
            // Refused in a URL, and never shown.
            let url = format!(
                "{}://bucket/p?{canonical}=hunter2",
                match scheme {
                    Scheme::S3 => "s3",
                    Scheme::Gcs => "gs",
                    _ => "az",
                }
            );
            let shown = redact(&url);
            assert!(!shown.contains("hunter2"), "{shown}");
            let error = ObjectUrl::parse(&url).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
            let variable = environment_variable(scheme, canonical).unwrap();
            assert!(error.contains(&variable), "{error} should name {variable}");
        }
    }
    all.len()
}

use crate::sink::object::ObjectUrl;

#[test]
fn every_s3_option_is_classified() {
    let checked = check::<AmazonS3ConfigKey>(
        Scheme::S3,
        &[
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "ContainerCredentialsRelativeUri",
            "ContainerCredentialsFullUri",
            "Encryption.CustomerEncryptionKey",
        ],
        &[
            "Region",
            "DefaultRegion",
            "Bucket",
            "Endpoint",
            "S3Endpoint",
            "ImdsV1Fallback",
            "VirtualHostedStyleRequest",
            "UnsignedPayload",
            "Checksum",
            "MetadataEndpoint",
            "ContainerAuthorizationTokenFile",
            "WebIdentityTokenFile",
            "RoleArn",
            "RoleSessionName",
            "StsEndpoint",
            "CopyIfNotExists",
            "ConditionalPut",
            "SkipSignature",
            "DisableTagging",
            "DisableBulkDelete",
            "S3Express",
            "RequestPayer",
            "Encryption.ServerSideEncryption",
            "Encryption.KmsKeyId",
            "Encryption.BucketKeyEnabled",
        ],
    );
    assert!(checked > 40, "{checked}");
}

#[test]
fn every_gcs_option_is_classified() {
    check::<GoogleConfigKey>(
        Scheme::Gcs,
        &["ServiceAccountKey", "BearerToken"],
        &[
            "ServiceAccount",
            "Bucket",
            "BaseUrl",
            "ApplicationCredentials",
            "SkipSignature",
        ],
    );
}

#[test]
fn every_azure_option_is_classified() {
    check::<AzureConfigKey>(
        Scheme::Azure,
        &[
            "AccessKey",
            "ClientSecret",
            "SasKey",
            "Token",
            "FabricSessionToken",
            "EncryptionKey",
        ],
        &[
            "AccountName",
            "ClientId",
            "AuthorityId",
            "AuthorityHost",
            "UseEmulator",
            "Endpoint",
            "UseFabricEndpoint",
            "MsiEndpoint",
            "ObjectId",
            "MsiResourceId",
            "FederatedTokenFile",
            "UseAzureCli",
            "SkipSignature",
            "ContainerName",
            "DisableTagging",
            "FabricTokenServiceUrl",
            "FabricWorkloadHost",
            "FabricClusterIdentifier",
            "CredentialType",
        ],
    );
}

#[test]
fn every_spelling_of_a_secret_is_a_secret() {
    for (scheme, option) in [
        (Scheme::S3, "sse_customer_key_base64"),
        (Scheme::S3, "aws_sse_customer_key_base64"),
        (Scheme::S3, "token"),
        (Scheme::S3, "aws_proxy_url"),
        (Scheme::Azure, "account_key"),
        (Scheme::Azure, "master_key"),
        (Scheme::Azure, "access_key"),
        (Scheme::Azure, "azure_storage_master_key"),
        (Scheme::Azure, "sas_token"),
        (Scheme::Azure, "bearer_token"),
        (Scheme::Gcs, "service_account_key"),
        (Scheme::Gcs, "bearer_token"),
    ] {
        assert_eq!(is_secret_option(scheme, option), Some(true), "{option}");
    }
    assert_eq!(is_secret_option(Scheme::S3, "colour"), None);
    assert_eq!(
        environment_variable(Scheme::Azure, "master_key").as_deref(),
        Some("AZURE_STORAGE_ACCOUNT_KEY")
    );
    assert_eq!(
        environment_variable(Scheme::S3, "allow_http").as_deref(),
        Some("AWS_ALLOW_HTTP")
    );
}

#[test]
fn redaction_hides_userinfo_and_every_value_not_known_to_be_plain() {
    assert_eq!(
        redact("s3://AKIA:wJalr@bucket/p?region=eu-west-1&secret_access_key=wJalr&colour=x"),
        "s3://***@bucket/p?region=eu-west-1&secret_access_key=***&colour=***"
    );
    assert_eq!(
        redact("ipfix+tcp://u:p@[fd00::1]:4739?domain=3&key=v"),
        "ipfix+tcp://***@[fd00::1]:4739?domain=3&key=***"
    );
    assert_eq!(redact("dir:/var/log/flowlog"), "dir:/var/log/flowlog");
    assert_eq!(redact("file:///var/lib/x"), "file:///var/lib/x");
}
