-- The flex TPD spend of a day (`Store::flex_tokens_since`: the flex jobs of a model whose
-- create returned since the day began) was a scan of every flex row of the model, refreshed
-- by each dispatcher several times a TPD day: with a large flex batch it grew with the
-- batch. This index holds only flex rows that have been submitted (queued rows, the bulk of a
-- batch, are not in it, so enqueue does not pay for it), ordered by the day's key.
CREATE INDEX jobs_flex_submitted ON jobs (model, submitted_at)
    WHERE service_tier = 'flex' AND submitted_at IS NOT NULL;
