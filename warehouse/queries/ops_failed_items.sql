-- Items whose last attempt failed, per stage.
SELECT stage, count(*) AS items FROM work_ledger WHERE status = 'failed' GROUP BY stage ORDER BY stage
