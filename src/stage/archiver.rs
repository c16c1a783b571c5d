//! The archiver's handles, built once with the context: the object store, the key template
//! and the download client. The archive stage (`worker::archive`) does the work; the chain
//! stage and the dashboard use the same keys.

use anyhow::Context;

use crate::blob::{BlobError, BlobStore, KeyTemplate, KeyVars, ObjectKey, utc_date};
use crate::config::Config;
use crate::store::Job;

/// Everything the archive stage needs beyond [`super::Ctx`]: the store, the key template and an
/// HTTP client for result downloads.
#[derive(Debug)]
pub struct Archiver {
    pub(crate) blob: BlobStore,
    pub(crate) keys: KeyTemplate,
    /// Downloads have no total timeout (a large video takes as long as it takes), only
    /// connect and per-read timeouts; the Ark client's total timeout fits API calls only.
    /// Redirects and name resolution follow [`super::safeurl`].
    pub(crate) http: reqwest::Client,
    /// Which URLs may be downloaded at all.
    pub(crate) urls: std::sync::Arc<super::safeurl::UrlPolicy>,
    pub(crate) delete_remote: bool,
}

impl Archiver {
    /// Builds the archiver from `[archive]`.
    ///
    /// # Errors
    /// A bad key template or URL, a backend that refuses its configuration.
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let keys = KeyTemplate::parse(&cfg.archive.key_template).context("archive.key_template")?;
        let blob =
            BlobStore::open(&cfg.archive.url, &cfg.archive.s3).context("opening archive.url")?;
        let (http, urls) = super::safeurl::download_client(cfg)?;
        Ok(Self {
            blob,
            keys,
            http,
            urls,
            delete_remote: cfg.archive.delete_remote,
        })
    }

    /// The object store.
    pub fn blob(&self) -> &BlobStore {
        &self.blob
    }

    /// The key of a job's video.
    ///
    /// # Errors
    /// The template uses `{task_id}` and the job has none, or the key is invalid.
    pub fn video_key(&self, job: &Job) -> Result<ObjectKey, BlobError> {
        let date = utc_date(job.created_at);
        self.keys.render(&KeyVars {
            date: &date,
            model: &job.model,
            job_id: job.id.as_str(),
            task_id: job.remote_task_id.as_deref(),
            batch: job.batch_id.as_deref(),
            tag: job.tags.first().map(String::as_str),
        })
    }
}

/// The key of the JSON sidecar next to a video key.
pub fn sidecar_key(video: &ObjectKey) -> ObjectKey {
    video.sibling(".json")
}

/// The key of the last frame next to a video key.
pub fn last_frame_key(video: &ObjectKey) -> ObjectKey {
    video.sibling(".last.png")
}
