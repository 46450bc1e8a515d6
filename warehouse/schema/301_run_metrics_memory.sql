-- run_metrics.peak_rss_mb: the flow process's peak resident memory during the run, in MB (it holds the
-- models with the thread runner). NULL when the tasks ran on Dask workers, whose memory it does not see,
-- or where the peak could not be measured from the run's start.
ALTER TABLE run_metrics ADD COLUMN IF NOT EXISTS peak_rss_mb DOUBLE;
