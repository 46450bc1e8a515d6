-- The newest finished backfill or nightly: its id and parameters (the next nightly repeats its selection).
SELECT run_id, parameters::VARCHAR FROM runs
WHERE flow IN ('backfill', 'nightly') AND status = 'completed'
ORDER BY started_at DESC
LIMIT 1
