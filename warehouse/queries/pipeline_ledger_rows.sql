-- The new ledger rows for a chunk's results, counting attempts across runs.
-- params: $stage, $run_id, $chunk; relation `outcome(item_key, fingerprint, status, error)`.
SELECT $stage AS stage, o.item_key, o.fingerprint, o.status, o.error,
       coalesce(prev.attempts, 0) + 1 AS attempts,
       $run_id AS run_id, $chunk AS chunk, now()::TIMESTAMP AS updated_at
FROM outcome AS o
LEFT JOIN (SELECT item_key, attempts FROM work_ledger WHERE stage = $stage) AS prev USING (item_key)
