-- The dashboard's prompt search (`/ui/jobs?q=`) through an FTS5 index instead of a LIKE scan
-- of every frozen request (issue 14).
--
-- Contentless (the prompt already lives in request_json; storing it again would double the
-- text) with contentless_delete so the delete trigger needs only the rowid. The trigram
-- tokenizer gives substring matches, case-insensitive, also inside CJK prompts where the
-- unicode61 tokenizer would see a whole sentence as one word. Keyed by the jobs rowid: jobs has
-- a TEXT primary key, so a VACUUM could renumber rowids; seedq never runs VACUUM (backups copy
-- pages, which keeps them), and anyone who does must rebuild this table the way it is filled
-- below.
CREATE VIRTUAL TABLE jobs_prompt_fts USING fts5(
    prompt, content = '', contentless_delete = 1, tokenize = 'trigram'
);

-- The text parts of the request's content array, joined by newlines. A request that is not
-- JSON (none are, but a trigger must never fail an insert) indexes as empty.
INSERT INTO jobs_prompt_fts (rowid, prompt)
SELECT j.rowid, (SELECT group_concat(json_extract(c.value, '$.text'), char(10))
                 FROM json_each(j.request_json, '$.content') AS c
                 WHERE json_extract(c.value, '$.type') = 'text')
FROM jobs AS j WHERE json_valid(j.request_json);

CREATE TRIGGER jobs_prompt_fts_insert AFTER INSERT ON jobs WHEN json_valid(NEW.request_json)
BEGIN
    INSERT INTO jobs_prompt_fts (rowid, prompt)
    SELECT NEW.rowid, group_concat(json_extract(c.value, '$.text'), char(10))
    FROM json_each(NEW.request_json, '$.content') AS c
    WHERE json_extract(c.value, '$.type') = 'text';
END;

CREATE TRIGGER jobs_prompt_fts_delete AFTER DELETE ON jobs
BEGIN
    DELETE FROM jobs_prompt_fts WHERE rowid = OLD.rowid;
END;

-- The request is frozen at enqueue, but a chain shot is rewritten when its predecessor's last
-- frame arrives (store/chain.rs) and a flex job that falls back to the default tier gets a new
-- body (store/bulk.rs); the text parts are re-indexed then.
CREATE TRIGGER jobs_prompt_fts_update AFTER UPDATE OF request_json ON jobs
WHEN OLD.request_json IS NOT NEW.request_json
BEGIN
    DELETE FROM jobs_prompt_fts WHERE rowid = OLD.rowid;
    INSERT INTO jobs_prompt_fts (rowid, prompt)
    SELECT NEW.rowid, group_concat(json_extract(c.value, '$.text'), char(10))
    FROM json_each(CASE WHEN json_valid(NEW.request_json) THEN NEW.request_json END,
                   '$.content') AS c
    WHERE json_extract(c.value, '$.type') = 'text';
END;
