-- Items of one stage whose inputs changed since they were last done (or that failed last time).
-- params: $stage; relation `wanted(item_key, fingerprint)` registered by the caller.
SELECT w.item_key, w.fingerprint
FROM wanted AS w
LEFT JOIN work_ledger AS l
       ON l.stage = $stage AND l.item_key = w.item_key
WHERE l.item_key IS NULL
   OR l.status <> 'done'
   OR l.fingerprint <> w.fingerprint
ORDER BY w.item_key
