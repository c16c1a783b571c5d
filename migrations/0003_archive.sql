-- seedq schema, version 3: archive bookkeeping. Append-only, like the others.
--
-- archive_attempts counts archive claims (the backoff of failed uploads), apart from
-- `attempts`, which counts submits. archive_key / archive_sha256 / archive_size (from 0001) are
-- written once a download has been verified, before the upload completes, so a crash between
-- the two can be recognised afterwards; the job is `archived` only once everything is stored.
-- The last frame's hash and size sit beside the video's. result_meta keeps what the succeeded
-- task said about its output (resolution, actual ratio, duration or frames, fps…) as JSON, for
-- the archive sidecar: the request may have left them to defaults or asked for `adaptive`.

ALTER TABLE jobs ADD COLUMN archive_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN archive_frame_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN archive_frame_size INTEGER;
ALTER TABLE jobs ADD COLUMN result_meta TEXT;
