-- Parameters of the newest backfill that finished (the nightly repeats its target selection).
SELECT parameters FROM runs
WHERE flow IN ('backfill', 'nightly') AND status = 'completed'
ORDER BY started_at DESC
LIMIT 1
