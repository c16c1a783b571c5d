-- The prompt search moves off `jobs` into a table of its own, filled behind the writes.
--
-- A trigram GIN index on an expression of `jobs` cost every insert and every non-HOT update
-- of a job (each claim, each state change) the prompt's extraction and a GIN insertion: in a
-- 100 000-row insert on PostgreSQL 15, 2.4 s with the index against 0.23 s without it. Here a
-- new or rewritten job only puts its id in `prompt_pending` (statement-level triggers, one
-- statement per write); `Store::index_prompts` moves pending jobs into `job_prompts` in
-- batches (the service runs it, crates/seedq-store/src/postgres/ui.rs), and the search reads
-- both, so a job is found the moment it is stored.

CREATE TABLE job_prompts (
    id     TEXT PRIMARY KEY,
    prompt TEXT NOT NULL
);

CREATE TABLE prompt_pending (
    id TEXT PRIMARY KEY
);

CREATE FUNCTION seedq_prompts_pend() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prompt_pending SELECT id FROM changed ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION seedq_prompts_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_prompts p USING removed r WHERE p.id = r.id;
    DELETE FROM prompt_pending p USING removed r WHERE p.id = r.id;
    RETURN NULL;
END $$;

CREATE TRIGGER prompts_on_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION seedq_prompts_pend();
-- A rewritten body (a chain shot given its first frame, a job moved to another tier) is pended
-- again, and its old prompt leaves the index at once, so a search never finds a job by text
-- it no longer has. A row trigger on the one column: the many updates that leave the body
-- alone (every claim and state change) do not run it at all, where a statement trigger with
-- transition tables would capture every updated row.
CREATE FUNCTION seedq_prompts_repend() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_prompts WHERE id = NEW.id;
    INSERT INTO prompt_pending VALUES (NEW.id) ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER prompts_on_update AFTER UPDATE OF request_json ON jobs FOR EACH ROW
    WHEN (OLD.request_json IS DISTINCT FROM NEW.request_json)
    EXECUTE FUNCTION seedq_prompts_repend();
CREATE TRIGGER prompts_on_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION seedq_prompts_forget();

-- The jobs already stored are indexed here, once.
INSERT INTO job_prompts SELECT id, COALESCE(seedq_prompt(request_json), '') FROM jobs;

DROP INDEX IF EXISTS jobs_prompt_trgm;

-- As in 0001: without the extension (a managed database that refuses it) the search scans.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX job_prompts_trgm ON job_prompts USING gin (lower(prompt) gin_trgm_ops);
EXCEPTION WHEN others THEN
    RAISE NOTICE 'pg_trgm is not available (%); prompt search scans', SQLERRM;
END $$;
