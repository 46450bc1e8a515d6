-- The newest pipeline runs with their state and counts. params: $limit
SELECT run_id, flow, status, started_at, finished_at,
       epoch(coalesce(finished_at, now()::TIMESTAMP) - started_at) AS seconds, counts::VARCHAR AS counts
FROM runs
ORDER BY started_at DESC
LIMIT $limit
