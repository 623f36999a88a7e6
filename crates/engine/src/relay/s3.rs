//! An S3 bucket (AWS or any S3-compatible server) as a [`Bucket`], through
//! `object_store`: request signing, connection pools and listings' pages
//! are its business; classifying failures as worth retrying or not is ours
//! (the relay retries with its own backoff, so that it can count retries).
//!
//! Must never: use multipart uploads (an object must be visible whole or
//! not at all), or look for credentials anywhere but where it is told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::store::{Bucket, StoreError};

/// Where the bucket is and who asks.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` if none was given).
    pub region: String,
    /// An S3-compatible server's URL (`http://` accepted), or AWS.
    pub endpoint: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
    /// Longest a request may take (a whole object's PUT or GET).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// An S3 bucket.
pub struct S3Bucket {
    store: AmazonS3,
    bucket: String,
}

impl S3Bucket {
    /// A client for the bucket (no request is made yet).
    pub fn open(config: &S3Config) -> Result<S3Bucket, StoreError> {
        // rustls needs its cryptography chosen once per process: ring,
        // which the secure channel already uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = config.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let client = ClientOptions::new()
            .with_allow_http(http)
            // One request per connection at a time, many connections: object
            // stores give each connection a modest rate.
            .with_http1_only()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(config.request_timeout);
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(client)
            .with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() });
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            // Servers of one's own rarely have a DNS name per bucket.
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(S3Bucket { store, bucket: config.bucket.clone() })
    }
}

fn path(name: &str) -> Result<Path, StoreError> {
    Path::parse(name).map_err(|e| StoreError::Failed(format!("{name:?} cannot be an object name: {e}")))
}

/// Sorts a failure into retry or not, with the cause a user can act on.
fn classify(e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StoreError::NoBucket,
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            StoreError::Denied(innermost(&*source))
        }
        E::Generic { source, .. } => {
            let message = innermost(&*source);
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*source);
            while let Some(e) = cause {
                // No answer (refused, reset, timed out, cut short): retry.
                if e.downcast_ref::<object_store::client::HttpError>().is_some() {
                    return StoreError::Transient(message);
                }
                // object_store keeps the status to itself but for its text.
                if let Some(status) = status_in(&e.to_string()) {
                    if status == 404 {
                        // (Objects not found are told apart before: this is a listing.)
                        return StoreError::NoBucket;
                    }
                    let transient = status >= 500 || status == 408 || status == 429;
                    let message = format!("the server answered {status}{}", s3_error(&message));
                    return if transient { StoreError::Transient(message) } else { StoreError::Failed(message) };
                }
                cause = e.source();
            }
            StoreError::Transient(message)
        }
        other => StoreError::Failed(other.to_string()),
    }
}

/// The HTTP status a failure's text names ("… status code: 503 …").
fn status_in(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("status code: ")?;
    rest.get(..3)?.parse().ok().filter(|s| (100..600).contains(s))
}

/// What an S3 error document says: ` SlowDown: Please reduce your request
/// rate`, or the text as it is if it is not one.
fn s3_error(text: &str) -> String {
    let field = |tag: &str| {
        let (_, rest) = text.split_once(&format!("<{tag}>"))?;
        Some(rest.split_once(&format!("</{tag}>"))?.0.to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!(" {code}: {message}"),
        (Some(code), None) => format!(" {code}"),
        _ => format!(": {text}"),
    }
}

/// The most specific cause in a chain ("Connection refused (os error 111)"
/// rather than "error sending request").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = last.to_string();
    let text = text.trim();
    if text.is_empty() { e.to_string() } else { text.to_string() }
}

impl Bucket for S3Bucket {
    async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        self.store.put(&path(name)?, PutPayload::from(body)).await.map(|_| ()).map_err(classify)
    }

    async fn create(&self, name: &str, body: Bytes) -> Result<bool, StoreError> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&path(name)?, PutPayload::from(body), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    /// A body cut short after some of it arrived is asked for again from
    /// where it stopped (of the same version of the object), for as long as
    /// each request brings more: over a link that drops connections every
    /// few seconds, an object that takes longer than that still arrives.
    async fn get(&self, name: &str, limit: u64, retried: &AtomicU64) -> Result<Option<Bytes>, StoreError> {
        let path = path(name)?;
        let result = match self.store.get_opts(&path, GetOptions::default()).await {
            Ok(result) => result,
            // (A bucket that is gone is a 404 too, said in the body.)
            Err(e @ object_store::Error::NotFound { .. }) if !e.to_string().contains("NoSuchBucket") => {
                return Ok(None);
            }
            Err(e) => return Err(classify(e)),
        };
        let size = result.meta.size;
        if size > limit {
            return Err(StoreError::TooLarge(size));
        }
        let etag = result.meta.e_tag.clone();
        let mut body = bytes::BytesMut::with_capacity(size as usize);
        let (mut stream, mut asked_at) = (result.into_stream(), 0);
        loop {
            match stream.next().await {
                Some(Ok(piece)) if body.len() as u64 + piece.len() as u64 <= size => body.extend_from_slice(&piece),
                Some(Ok(_)) => {
                    return Err(StoreError::Failed(format!("{name}: longer than its announced {size} bytes")));
                }
                None if body.len() as u64 == size => return Ok(Some(body.freeze())),
                None => return Err(StoreError::Transient(format!("{name}: cut short"))),
                Some(Err(e)) => {
                    let e = classify(e);
                    let got = body.len() as u64;
                    if got == size {
                        return Ok(Some(body.freeze()));
                    }
                    if !e.is_transient() || got == asked_at || etag.is_none() {
                        return Err(e);
                    }
                    let options = GetOptions {
                        range: Some(GetRange::Offset(got)),
                        if_match: etag.clone(),
                        ..GetOptions::default()
                    };
                    retried.fetch_add(1, Ordering::Relaxed);
                    stream = match self.store.get_opts(&path, options).await {
                        Ok(rest) => rest.into_stream(),
                        // Gone or replaced meanwhile: the caller sees it on its next try.
                        Err(_) => return Err(e),
                    };
                    asked_at = got;
                }
            }
        }
    }

    async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<String>, StoreError> {
        let trimmed = prefix.trim_end_matches('/');
        let base = if trimmed.is_empty() { None } else { Some(path(trimmed)?) };
        let listing = self.store.list(base.as_ref()).map_ok(|meta| meta.location.to_string());
        let listing = listing.try_filter(|name| std::future::ready(name.starts_with(prefix)));
        let names: Vec<String> = listing.take(limit.unwrap_or(usize::MAX)).try_collect().await.map_err(classify)?;
        Ok(names)
    }

    async fn delete(&self, names: Vec<String>) -> Result<(), StoreError> {
        let paths: Vec<Path> = names.iter().map(|n| path(n)).collect::<Result<_, _>>()?;
        let mut results = self.store.delete_stream(futures_util::stream::iter(paths.into_iter().map(Ok)).boxed());
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    fn url(&self, name: &str) -> String {
        format!("s3://{}/{name}", self.bucket)
    }
}
