-- The queue head stays short (docs/performance-claims.md). A claim updates jobs out of
-- `queued`; until vacuum runs, the old versions' entries stay at the head of the claim's index
-- range (`jobs_queue`: state, model, priority, id), and every claim steps over them before it
-- finds a queued row: with 100 000 jobs just claimed, 9–42 ms a claim instead of 0.1 ms
-- (`EXPLAIN (ANALYZE, BUFFERS)`). The default trigger (20 % of the table changed, 220 000
-- updates with 1 100 000 jobs) lets that head grow for minutes at 1 000 claims a second;
-- 2 % keeps it to tens of seconds' worth. Vacuum visits only the pages that changed
-- (the visibility map), so running it more often costs little more in all.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
