-- Whether a run id is known (gallery --run): a mistyped id is an error, not an empty page.
SELECT count(*) > 0 FROM runs WHERE run_id = $run_id
