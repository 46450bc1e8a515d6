-- Record one run's metrics (a re-recorded run replaces its row). params: all run_metrics columns by name.
DELETE FROM run_metrics WHERE run_id = $run_id;
INSERT INTO run_metrics
SELECT $run_id, $flow, now()::TIMESTAMP, $seconds, $users, $pairs, $processed, $skipped, $failed, $images,
       $pairs_per_hour, $posters, $mean_z, $mean_d_p, $mean_d_t, $stages::JSON, $gallery, $flow_run_id, $peak_rss_mb
