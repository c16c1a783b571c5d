-- Embedded images stored once, by hash. A frozen body (jobs.request_json) holds
-- "seedq-image:sha256:<hex>" where the data URL was; the dispatcher puts the data URL back just
-- before the POST. Thirty jobs sharing a 27 MB first frame keep one copy, and reading a job
-- row (claims, ls) no longer reads its images.
CREATE TABLE images (
    sha256      TEXT PRIMARY KEY,   -- hex SHA-256 of the data URL text
    data_url    TEXT NOT NULL,      -- data:image/<fmt>;base64,<data>, as the user gave it
    created_at  INTEGER NOT NULL
);
