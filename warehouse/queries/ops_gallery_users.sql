-- Users with posters (of run $run_id, or the newest posters when NULL), in id order, and how many in all.
-- params: $run_id, $limit
WITH shown AS (
    SELECT DISTINCT user_id FROM posters WHERE $run_id IS NULL OR run_id = $run_id
)
SELECT user_id, count(*) OVER () AS total FROM shown ORDER BY user_id LIMIT $limit
