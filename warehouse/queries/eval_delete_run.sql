-- Remove an evaluation run's rows before (re)writing them: re-running with the same --run-id replaces it.
DELETE FROM evaluations WHERE run_id = $run_id
