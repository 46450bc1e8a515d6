-- Close a training / evaluation run with its status and counts.
UPDATE runs SET status = $status, counts = $counts, finished_at = now()::TIMESTAMP WHERE run_id = $run_id
