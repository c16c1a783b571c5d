//! The archive's object store: one [`BlobStore`] over `object_store`, chosen by URL.
//!
//! Owns: building the backend from `[archive]` (`s3://` with a custom endpoint for MinIO, Ceph,
//! R2, Garage, TOS…; `file://`; `memory://`; `gs://` and `az://` as object_store provides them),
//! object keys ([`KeyTemplate`], [`ObjectKey`]), and streaming uploads ([`Upload`]) that hash
//! and count the bytes as they pass. It knows nothing of jobs, the job store or where the bytes
//! come from: the archive stage feeds it a stream.
//!
//! Invariants:
//! - An upload is a multipart upload: it either completes, and the object appears whole at
//!   once, or it is aborted and nothing is visible under the key.
//! - Memory per upload is bounded by [`PART_SIZE`] × ([`PART_CONCURRENCY`] + 1) whatever the
//!   object's size: [`Upload::write`] waits for a free part slot before it buffers more.
//! - Keys are relative, with no empty, `.` or `..` segment, so a template can never escape the
//!   configured prefix.
//! - Credentials are never part of an error, a log line or `Debug` output; URLs are shown
//!   without their user-info.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::store::Timestamp;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, ObjectStoreExt, ObjectStoreScheme,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use secrecy::ExposeSecret;
use sha2::{Digest as _, Sha256};

use crate::config::S3Config;

/// Size of one multipart part. S3 requires at least 5 MiB for every part but the last; 8 MiB
/// keeps the request count of a 1 GiB video near 128 while bounding memory.
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once per object. Two keep the link busy while the next part fills.
pub const PART_CONCURRENCY: usize = 2;
/// Retries of one object store request inside object_store (connection errors, 5xx). Higher
/// layers retry whole uploads, so a short inner budget keeps a dead server from stalling a step.
const STORE_RETRIES: usize = 3;
/// Upper bound on the inner retries of one request.
const STORE_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// S3's key length limit, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("unsupported archive URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot set up the object store at {url}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot create the archive directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid key template {template:?}: {reason}")]
    Template { template: String, reason: String },
    #[error("invalid object key {key:?}: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("object store {op} of {key} failed")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the source stream failed after {received} bytes")]
    Source {
        received: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("size mismatch: expected {expected} bytes, received {received}")]
    Size { expected: u64, received: u64 },
}

impl BlobError {
    /// The store refused our credentials or permissions: retrying soon will not help, and the
    /// operator must fix the configuration.
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            BlobError::Store {
                source: object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. },
                ..
            }
        )
    }

    /// The store's own storage is full (ENOSPC, EDQUOT under a `file://` archive, a quota):
    /// the machine's or the bucket's state, which passes when an operator frees space, not a
    /// fault of the object being written.
    pub fn is_storage_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            // object_store keeps the file system's error as an opaque boxed source: its kind
            // is only read by asking each cause whether it is an `io::Error`.
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }) {
                return true;
            }
            // object_store flattens some I/O errors into text.
            let text = e.to_string();
            if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The bytes coming in were wrong or broken off (not the store's fault).
    pub fn is_source(&self) -> bool {
        matches!(self, BlobError::Source { .. } | BlobError::Size { .. })
    }
}

/// The SHA-256 (lowercase hex) and size of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// Lowercase hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// A validated object key, relative to the store's prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Checks `key`: relative, no empty, `.` or `..` segment, no backslash or control
    /// character, at most 1024 bytes.
    ///
    /// # Errors
    /// [`BlobError::Key`] naming the rule broken.
    pub fn parse(key: &str) -> Result<Self, BlobError> {
        let bad = |reason| {
            Err(BlobError::Key {
                key: key.to_string(),
                reason,
            })
        };
        if key.is_empty() {
            return bad("it is empty");
        }
        if key.starts_with('/') {
            return bad("it is absolute");
        }
        if key.len() > MAX_KEY_BYTES {
            return bad("it is longer than 1024 bytes");
        }
        if key.chars().any(|c| c == '\\' || c.is_control()) {
            return bad("it contains a backslash or a control character");
        }
        for seg in key.split('/') {
            match seg {
                "" => return bad("it has an empty segment"),
                "." | ".." => return bad("it has a `.` or `..` segment"),
                _ => {}
            }
        }
        if Path::parse(key).is_err() {
            return bad("object_store refuses it");
        }
        Ok(Self(key.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key next to this one: the extension (`.mp4`) replaced by `suffix` (`.json`,
    /// `.last.png`).
    pub fn sibling(&self, suffix: &str) -> ObjectKey {
        let file_start = self.0.rfind('/').map_or(0, |i| i + 1);
        let stem_end = match self.0[file_start..].rfind('.') {
            // A leading dot is a hidden name, not an extension.
            Some(i) if i > 0 => file_start + i,
            _ => self.0.len(),
        };
        ObjectKey(format!("{}{suffix}", &self.0[..stem_end]))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A placeholder of the key template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Date,
    Model,
    JobId,
    TaskId,
    Batch,
    Tag,
}

impl Var {
    const ALL: [(&'static str, Var); 6] = [
        ("date", Var::Date),
        ("model", Var::Model),
        ("job_id", Var::JobId),
        ("task_id", Var::TaskId),
        ("batch", Var::Batch),
        ("tag", Var::Tag),
    ];
}

#[derive(Clone, Debug)]
enum Part {
    Lit(String),
    Var(Var),
}

/// The values a key is rendered from.
#[derive(Clone, Debug, Default)]
pub struct KeyVars<'a> {
    /// `YYYY-MM-DD` (UTC) of the job's creation, so re-archiving lands on the same key.
    pub date: &'a str,
    /// The model id as submitted.
    pub model: &'a str,
    /// seedq's job id.
    pub job_id: &'a str,
    /// Ark's task id, once the job has one.
    pub task_id: Option<&'a str>,
    /// The job's batch, if any.
    pub batch: Option<&'a str>,
    /// The job's first tag.
    pub tag: Option<&'a str>,
}

/// A parsed `archive.key_template`, e.g. `{date}/{model}/{job_id}.mp4`.
#[derive(Clone, Debug)]
pub struct KeyTemplate {
    source: String,
    parts: Vec<Part>,
}

/// Stands in for a missing `{batch}` or `{tag}`, so a template stays usable for every job.
const MISSING: &str = "none";

impl KeyTemplate {
    /// Parses and checks a template: known placeholders only, `{job_id}` or `{task_id}`
    /// present (otherwise jobs would overwrite each other), and a valid key for sample values.
    ///
    /// # Errors
    /// [`BlobError::Template`] saying what is wrong.
    pub fn parse(template: &str) -> Result<Self, BlobError> {
        let err = |reason: String| BlobError::Template {
            template: template.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| err("an unclosed `{`".into()))?;
            let name = &rest[open + 1..open + close];
            let var = Var::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    err(format!(
                        "unknown placeholder {{{name}}}; known: {{date}}, {{model}}, {{job_id}}, {{task_id}}, {{batch}}, {{tag}}"
                    ))
                })?;
            parts.push(Part::Var(var));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(err("a `}` without `{`".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let unique = parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::JobId | Var::TaskId)));
        if !unique {
            return Err(err(
                "it must contain {job_id} or {task_id}, or every job gets the same key".into(),
            ));
        }
        let t = Self {
            source: template.to_string(),
            parts,
        };
        let sample = KeyVars {
            date: "2026-01-01",
            model: "model",
            job_id: "job",
            task_id: Some("task"),
            batch: Some("batch"),
            tag: Some("tag"),
        };
        t.render(&sample).map_err(|e| err(e.to_string()))?;
        Ok(t)
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the key. Values are made path-safe first: anything outside `[A-Za-z0-9._-]`
    /// becomes `_`, and a value of only dots becomes `_`, so user-chosen tags and batches cannot
    /// add segments or climb out of the prefix.
    ///
    /// # Errors
    /// `{task_id}` used without a task id, or a key that fails [`ObjectKey::parse`].
    pub fn render(&self, v: &KeyVars<'_>) -> Result<ObjectKey, BlobError> {
        let mut key = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => key.push_str(s),
                Part::Var(var) => {
                    let value = match var {
                        Var::Date => Some(v.date),
                        Var::Model => Some(v.model),
                        Var::JobId => Some(v.job_id),
                        Var::TaskId => v.task_id,
                        Var::Batch => Some(v.batch.unwrap_or(MISSING)),
                        Var::Tag => Some(v.tag.unwrap_or(MISSING)),
                    }
                    .ok_or_else(|| BlobError::Key {
                        key: self.source.clone(),
                        reason: "{task_id} is used but the job has no remote task id",
                    })?;
                    key.push_str(&path_safe(value));
                }
            }
        }
        ObjectKey::parse(&key)
    }
}

fn path_safe(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.chars().all(|c| c == '.') {
        // Also covers the empty value.
        "_".repeat(s.len().max(1))
    } else {
        s
    }
}

/// `url` without user-info (which could hold credentials), for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                // Both setters only fail for URLs that cannot have user-info: nothing to hide.
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

/// The archive's object store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The configured URL without credentials.
    url: String,
    /// LocalFileSystem refuses object attributes (content type), so only others get them.
    attributes: bool,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: STORE_RETRIES,
        retry_timeout: STORE_RETRY_TIMEOUT,
    }
}

impl BlobStore {
    /// Opens the store for `url` (`archive.url`) with `s3` for `s3://` URLs.
    ///
    /// `file://` creates the directory. `s3://bucket/prefix` takes endpoint, region,
    /// path-style, plain-HTTP permission and keys from `s3`; without keys, object_store's
    /// other AWS credential sources (instance metadata, web identity) apply. `gs://` and
    /// `az://` are configured by object_store's own environment variables (`GOOGLE_*`,
    /// `AZURE_*`), read here once at start.
    ///
    /// # Errors
    /// An unsupported or malformed URL, an uncreatable directory, a backend that refuses its
    /// configuration.
    pub fn open(url: &str, s3: &S3Config) -> Result<Self, BlobError> {
        let shown = redact_url(url);
        let bad = |reason: &str| BlobError::Url {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let build = |source| BlobError::Build {
            url: shown.clone(),
            source,
        };
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| bad("not an absolute local path"))?;
            std::fs::create_dir_all(&dir).map_err(|source| BlobError::Dir {
                path: dir.clone(),
                source,
            })?;
            // fsync: `archived` in the job store must mean the bytes survive a power cut.
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(build)?
                .with_fsync(true);
            return Ok(Self {
                inner: Arc::new(fs),
                prefix: Path::default(),
                url: shown,
                attributes: false,
            });
        }
        if matches!(parsed.scheme(), "s3" | "s3a") && parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no bucket: use s3://bucket/prefix"));
        }
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| bad(&e.to_string()))?;
        let inner: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
            ObjectStoreScheme::AmazonS3 => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("no bucket: use s3://bucket/prefix"))?;
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&s3.region)
                    .with_allow_http(s3.allow_http)
                    .with_virtual_hosted_style_request(!s3.path_style)
                    .with_retry(retry_config());
                let endpoint = s3.endpoint.as_deref().filter(|e| !e.is_empty());
                if let Some(ep) = endpoint {
                    b = b.with_endpoint(ep);
                }
                // Over TLS the payload needs no SigV4 hash of its own: TLS protects it in
                // transit and the archiver hashes every byte end to end anyway, so signing it
                // would cost a second SHA-256 pass over every video. Over plain HTTP the
                // signature is the only integrity check the server makes, so it stays.
                let tls = endpoint.is_none_or(|e| e.starts_with("https://"));
                b = b.with_unsigned_payload(tls);
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k.expose_secret());
                }
                if let Some(k) = &s3.secret_access_key {
                    b = b.with_secret_access_key(k.expose_secret());
                }
                Arc::new(b.build().map_err(build)?)
            }
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry_config())
                    .build()
                    .map_err(build)?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry_config())
                    .build()
                    .map_err(build)?,
            ),
            _ => return Err(bad("use file://, s3://, memory://, gs:// or az://")),
        };
        Ok(Self {
            inner,
            prefix,
            url: shown,
            attributes: true,
        })
    }

    /// The store's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &ObjectKey) -> Path {
        // Both sides are validated paths; joining them keeps them valid.
        let mut p = self.prefix.clone();
        for seg in key.as_str().split('/') {
            p = p.clone().join(seg);
        }
        p
    }

    fn store_err(
        op: &'static str,
        key: &ObjectKey,
    ) -> impl FnOnce(object_store::Error) -> BlobError {
        let key = key.to_string();
        move |source| BlobError::Store { op, key, source }
    }

    fn attributes(&self, content_type: &'static str) -> Attributes {
        let mut a = Attributes::new();
        if self.attributes {
            a.insert(Attribute::ContentType, content_type.into());
        }
        a
    }

    /// The size of the object at `key`, or `None` when there is none.
    ///
    /// # Errors
    /// Any failure other than "not found".
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<u64>, BlobError> {
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_err("head", key)(e)),
        }
    }

    /// Writes a small object in one request (sidecars).
    ///
    /// # Errors
    /// The store refused the write.
    pub async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &'static str,
    ) -> Result<Digest, BlobError> {
        let digest = Digest {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
        };
        let opts = PutOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        self.inner
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), opts)
            .await
            .map_err(Self::store_err("put", key))?;
        Ok(digest)
    }

    /// Starts a streaming upload to `key`. Nothing is visible until [`Upload::finish`].
    ///
    /// # Errors
    /// The store refused to start the upload.
    pub async fn upload(
        &self,
        key: &ObjectKey,
        content_type: &'static str,
    ) -> Result<Upload, BlobError> {
        let opts = PutMultipartOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        let mp = self
            .inner
            .put_multipart_opts(&self.path(key), opts)
            .await
            .map_err(Self::store_err("start upload", key))?;
        Ok(Upload {
            key: key.clone(),
            writer: WriteMultipart::new_with_chunk_size(mp, PART_SIZE),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Streams the object at `key`: its size and its bytes. `None` when there is none.
    ///
    /// # Errors
    /// Any failure other than "not found"; stream items carry read failures.
    pub async fn get(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(u64, BoxStream<'static, Result<Bytes, BlobError>>)>, BlobError> {
        match self.inner.get(&self.path(key)).await {
            Ok(r) => {
                let size = r.meta.size;
                let k = key.clone();
                let stream = r
                    .into_stream()
                    .map_err(move |e| Self::store_err("read", &k)(e))
                    .boxed();
                Ok(Some((size, stream)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_err("get", key)(e)),
        }
    }

    /// The bytes `range` (end exclusive) of the object at `key`: what the dashboard's video
    /// player asks for when it seeks. The caller bounds the range; `None` when there is no object.
    ///
    /// # Errors
    /// Any failure other than "not found".
    pub async fn get_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, BlobError> {
        match self.inner.get_range(&self.path(key), range).await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_err("read range", key)(e)),
        }
    }

    /// Reads the object at `key` back and hashes it (streaming); `None` when there is none.
    ///
    /// # Errors
    /// The read failed.
    pub async fn digest(&self, key: &ObjectKey) -> Result<Option<Digest>, BlobError> {
        let Some((_, mut stream)) = self.get(key).await? else {
            return Ok(None);
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok(Some(Digest {
            sha256: hex::encode(hasher.finalize()),
            size,
        }))
    }
}

impl BlobStore {
    /// Deletes the object at `key`; a missing object is not an error.
    ///
    /// # Errors
    /// The store refused the delete.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), BlobError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_err("delete", key)(e)),
        }
    }

    /// The objects directly under `dir` (not in deeper "directories"), sorted by key.
    ///
    /// # Errors
    /// The store refused the listing.
    pub async fn list(&self, dir: &ObjectKey) -> Result<Vec<ObjectKey>, BlobError> {
        let listing = self
            .inner
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(Self::store_err("list", dir))?;
        let mut keys: Vec<ObjectKey> = listing
            .objects
            .iter()
            .filter_map(|m| {
                let rel: Vec<String> = m
                    .location
                    .prefix_match(&self.prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                ObjectKey::parse(&rel.join("/")).ok()
            })
            .collect();
        keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(keys)
    }
}

/// A streaming upload in progress: parts go up as they fill, at most [`PART_CONCURRENCY`] at
/// a time, while the bytes are hashed and counted.
///
/// Dropping it without [`Upload::finish`] leaves no object (an S3 multipart upload that is
/// never completed is invisible and removed by the bucket's lifecycle rules); call
/// [`Upload::abort`] to clean up at once.
#[derive(Debug)]
pub struct Upload {
    key: ObjectKey,
    writer: WriteMultipart,
    hasher: Sha256,
    size: u64,
}

impl Upload {
    /// Adds a chunk, first waiting until a part slot is free (backpressure).
    ///
    /// # Errors
    /// An earlier part failed to upload.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.writer
            .wait_for_capacity(PART_CONCURRENCY)
            .await
            .map_err(BlobStore::store_err("upload part", &self.key))?;
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        // `put` keeps the chunk as is: no copy into a part buffer.
        self.writer.put(chunk);
        Ok(())
    }

    /// Copies a whole byte stream in, checking its length against `expected` (the source's
    /// `Content-Length`) as it goes. Returns what was received; the upload is still open.
    ///
    /// # Errors
    /// [`BlobError::Source`] when the stream fails, [`BlobError::Size`] when it delivers more
    /// or fewer bytes than promised, or an upload failure. The caller should then `abort`.
    pub async fn copy_from<S, E>(
        &mut self,
        mut stream: S,
        expected: Option<u64>,
    ) -> Result<Digest, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BlobError::Source {
                received: self.size,
                source: e.into(),
            })?;
            let received = self.size + chunk.len() as u64;
            if let Some(expected) = expected
                && received > expected
            {
                return Err(BlobError::Size { expected, received });
            }
            self.write(chunk).await?;
        }
        if let Some(expected) = expected
            && self.size != expected
        {
            return Err(BlobError::Size {
                expected,
                received: self.size,
            });
        }
        Ok(self.digest())
    }

    /// The hash and size of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest {
            sha256: hex::encode(self.hasher.clone().finalize()),
            size: self.size,
        }
    }

    /// Uploads the last part and completes the upload: the object appears whole.
    ///
    /// # Errors
    /// A part or the completion failed (the upload is then aborted).
    pub async fn finish(self) -> Result<Digest, BlobError> {
        let digest = self.digest();
        self.writer
            .finish()
            .await
            .map_err(BlobStore::store_err("complete upload", &self.key))?;
        Ok(digest)
    }

    /// Abandons the upload and removes its parts.
    ///
    /// # Errors
    /// The store could not be told (the parts then expire by the bucket's rules).
    pub async fn abort(self) -> Result<(), BlobError> {
        self.writer
            .abort()
            .await
            .map_err(BlobStore::store_err("abort upload", &self.key))
    }
}

/// `YYYY-MM-DD` (UTC) of a unix-ms timestamp, for `{date}`.
pub fn utc_date(at: Timestamp) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(at.secs())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full file system under the archive is told apart wherever object_store puts it: as
    /// an `io::Error` among the causes, or flattened into a cause's text. Other failures are
    /// not storage being full.
    #[test]
    fn a_full_archive_disk_is_told_from_other_failures() {
        let store_err = |source: Box<dyn std::error::Error + Send + Sync>| BlobError::Store {
            op: "put",
            key: "k".into(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source,
            },
        };
        let cases: Vec<(&str, BlobError, bool)> = vec![
            (
                "ENOSPC",
                store_err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::StorageFull,
                ))),
                true,
            ),
            (
                "EDQUOT",
                store_err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::QuotaExceeded,
                ))),
                true,
            ),
            (
                "flattened",
                store_err("write failed: No space left on device (os error 28)".into()),
                true,
            ),
            (
                "refused",
                store_err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::PermissionDenied,
                ))),
                false,
            ),
            (
                "short body",
                BlobError::Size {
                    expected: 2,
                    received: 1,
                },
                false,
            ),
        ];
        for (name, e, want) in cases {
            assert_eq!(e.is_storage_full(), want, "{name}");
        }
    }

    fn vars<'a>() -> KeyVars<'a> {
        KeyVars {
            date: "2026-05-14",
            model: "doubao-seedance-1-0-pro-250528",
            job_id: "01jabc",
            task_id: Some("cgt-20260514-abcde"),
            batch: None,
            tag: Some("pets"),
        }
    }

    #[test]
    fn default_template_renders_date_model_and_id() {
        let t = KeyTemplate::parse("{date}/{model}/{job_id}.mp4").expect("template");
        let k = t.render(&vars()).expect("key");
        assert_eq!(
            k.as_str(),
            "2026-05-14/doubao-seedance-1-0-pro-250528/01jabc.mp4"
        );
        assert_eq!(
            k.sibling(".json").as_str(),
            "2026-05-14/doubao-seedance-1-0-pro-250528/01jabc.json"
        );
        assert_eq!(
            k.sibling(".last.png").as_str(),
            "2026-05-14/doubao-seedance-1-0-pro-250528/01jabc.last.png"
        );
    }

    #[test]
    fn every_placeholder_is_available_and_missing_ones_have_a_stand_in() {
        let t = KeyTemplate::parse("{batch}/{tag}/{task_id}-{job_id}").expect("template");
        let k = t.render(&vars()).expect("key");
        assert_eq!(k.as_str(), "none/pets/cgt-20260514-abcde-01jabc");
        assert_eq!(
            k.sibling(".json").as_str(),
            "none/pets/cgt-20260514-abcde-01jabc.json"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (t, needle) in [
            ("{date}/{model}.mp4", "{job_id} or {task_id}"),
            ("{date}/{nope}/{job_id}", "unknown placeholder {nope}"),
            ("{date/{job_id}", "unknown placeholder"),
            ("/abs/{job_id}.mp4", "absolute"),
            ("a//{job_id}.mp4", "empty segment"),
            ("../{job_id}.mp4", "`..`"),
            ("{job_id}}", "without `{`"),
            ("x/{job_id", "unclosed"),
        ] {
            let e = KeyTemplate::parse(t).err().map(|e| e.to_string());
            assert!(e.as_ref().is_some_and(|e| e.contains(needle)), "{t}: {e:?}");
        }
    }

    #[test]
    fn user_values_cannot_climb_out_or_add_segments() {
        let t = KeyTemplate::parse("{tag}/{batch}/{job_id}.mp4").expect("template");
        let mut v = vars();
        v.tag = Some("..");
        v.batch = Some("a/../../etc");
        let k = t.render(&v).expect("key");
        assert_eq!(k.as_str(), "__/a_.._.._etc/01jabc.mp4");
        v.tag = Some("");
        assert_eq!(
            t.render(&v).expect("key").as_str(),
            "_/a_.._.._etc/01jabc.mp4"
        );
        let t = KeyTemplate::parse("{task_id}.mp4").expect("template");
        v.task_id = None;
        assert!(t.render(&v).is_err());
    }

    #[test]
    fn key_rules() {
        assert!(ObjectKey::parse("a/b.mp4").is_ok());
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", "a\\b", "a\nb"] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::parse(&"a".repeat(1025)).is_err());
        assert_eq!(
            ObjectKey::parse("a.b/c")
                .expect("key")
                .sibling(".json")
                .as_str(),
            "a.b/c.json"
        );
        assert_eq!(
            ObjectKey::parse("d/.hidden")
                .expect("key")
                .sibling(".json")
                .as_str(),
            "d/.hidden.json"
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("s3://AKID:SECRET@bucket/prefix"),
            "s3://bucket/prefix"
        );
        assert!(!redact_url("s3://AKID:SECRET@bucket/p").contains("SECRET"));
        assert_eq!(utc_date(Timestamp::EPOCH), "1970-01-01");
        assert_eq!(
            utc_date(Timestamp::from_ms(1_778_754_737_000)),
            "2026-05-14"
        );
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let e = BlobStore::open("ftp://x/y", &S3Config::default())
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("ftp://x/y")), "named");
        let e = BlobStore::open("s3:///prefix", &S3Config::default())
            .err()
            .map(|e| e.to_string());
        assert!(e.as_ref().is_some_and(|e| e.contains("bucket")), "{e:?}");
    }

    async fn roundtrip(store: &BlobStore) {
        let key = ObjectKey::parse("d/video.mp4").expect("key");
        assert_eq!(store.head(&key).await.expect("head"), None);
        // Three parts: two full, one short, fed in uneven chunks.
        let total = 2 * PART_SIZE + 12_345;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(100_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut up = store.upload(&key, "video/mp4").await.expect("start");
        let got = up
            .copy_from(futures::stream::iter(chunks), Some(total as u64))
            .await
            .expect("copy");
        assert_eq!(
            store.head(&key).await.expect("head"),
            None,
            "invisible before finish"
        );
        let done = up.finish().await.expect("finish");
        let want = Digest {
            sha256: hex::encode(Sha256::digest(&data)),
            size: total as u64,
        };
        assert_eq!(got, want);
        assert_eq!(done, want);
        assert_eq!(store.head(&key).await.expect("head"), Some(total as u64));
        assert_eq!(store.digest(&key).await.expect("digest"), Some(want));
    }

    #[tokio::test]
    async fn memory_and_local_backends_round_trip_a_multipart_object() {
        roundtrip(&BlobStore::open("memory://", &S3Config::default()).expect("memory")).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("archive");
        let url = format!("file://{}", root.display());
        let store = BlobStore::open(&url, &S3Config::default()).expect("local");
        roundtrip(&store).await;
        assert!(
            root.join("d/video.mp4").is_file(),
            "a plain file under the root"
        );
    }

    #[tokio::test]
    async fn short_or_long_streams_are_refused_and_leave_nothing() {
        let store = BlobStore::open("memory://", &S3Config::default()).expect("memory");
        let key = ObjectKey::parse("v.mp4").expect("key");
        for (len, expected) in [(10usize, 11u64), (12, 11)] {
            let mut up = store.upload(&key, "video/mp4").await.expect("start");
            let chunks = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; len]))];
            let e = up
                .copy_from(futures::stream::iter(chunks), Some(expected))
                .await
                .expect_err("size mismatch");
            assert!(matches!(e, BlobError::Size { .. }), "{e}");
            assert!(e.is_source());
            up.abort().await.expect("abort");
            assert_eq!(store.head(&key).await.expect("head"), None);
        }
        let mut up = store.upload(&key, "video/mp4").await.expect("start");
        let broken = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("connection reset")),
        ];
        let e = up
            .copy_from(futures::stream::iter(broken), None)
            .await
            .expect_err("source error");
        assert!(matches!(e, BlobError::Source { received: 3, .. }), "{e}");
        up.abort().await.expect("abort");
        assert_eq!(store.head(&key).await.expect("head"), None);
    }
}
