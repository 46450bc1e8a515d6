-- Record (or restart) a training / evaluation run in `runs`.
DELETE FROM runs WHERE run_id = $run_id;
INSERT INTO runs (run_id, flow, status, parameters, checkpoints, prompt_version, started_at)
VALUES ($run_id, $flow, 'running', $parameters, $checkpoints, $prompt_version, now()::TIMESTAMP)
