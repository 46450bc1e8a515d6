-- params: $stage; relation `outcome(item_key, ...)`.
DELETE FROM work_ledger
WHERE stage = $stage AND item_key IN (SELECT item_key FROM outcome)
