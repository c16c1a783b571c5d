-- Paused models and batches (`seedq pause`, the dashboard's Pause buttons, issue 14).
--
-- A row holds back the claim of queued jobs of that model or batch; jobs already at Ark carry
-- on. `kind` is 'model' or 'batch'; deleting the row resumes.
CREATE TABLE paused (
    kind      TEXT NOT NULL CHECK (kind IN ('model', 'batch')),
    name      TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
