//! Where a checked request becomes a job: the `seedq-ark` crate knows what Ark accepts, the
//! store what a job row holds, and neither knows the other.

use crate::request::{self, Invalid, Prepared};
use crate::store::NewJob;

/// A prepared job as the store row `seedq submit` and the API doors enqueue: the body as it
/// will be POSTed (images embedded), checked against the API's 64 MB limit, and the shape
/// (`720p/5s`) the dispatcher learns generation times by.
///
/// # Errors
/// The body is over the API's size limit.
pub fn new_job(p: Prepared) -> Result<NewJob, Invalid> {
    let request_json =
        serde_json::to_string(&p.request).expect("a create request always serialises to JSON");
    request::image::check_body_size(request_json.len(), &p.model)?;
    let e = &p.effective;
    let shape = Some(match (e.frames, e.duration) {
        (Some(f), _) => format!("{}/{f}f", e.resolution),
        (None, Some(d)) => format!("{}/{d}s", e.resolution),
        (None, None) => e.resolution.clone(),
    });
    Ok(NewJob {
        id: p.id,
        model: p.model,
        flex: p.flex,
        priority: p.priority,
        request_json,
        key: p.key,
        tags: p.tags,
        batch: p.batch,
        shape,
        est_tokens: p.est_tokens,
        expires_after: Some(p.expires_after),
        seed: p.seed,
    })
}
