-- run_metrics (issue 7): the key numbers of each finished pipeline run, one row per run, for SQL and
-- dashboards. The same numbers are shown as Prefect artifacts; Prefect's copy is for browsing only.
CREATE TABLE IF NOT EXISTS run_metrics (
    run_id           VARCHAR,
    flow             VARCHAR,      -- backfill | nightly | ...
    finished_at      TIMESTAMP,
    seconds          DOUBLE,       -- wall time of the run
    users            INTEGER,      -- users selected
    pairs            INTEGER,      -- (user, target) pairs selected
    processed        INTEGER,      -- items computed, all stages
    skipped          INTEGER,      -- items already up to date, all stages
    failed           INTEGER,      -- items that failed (retried by the next run)
    images           INTEGER,      -- images generated
    pairs_per_hour   DOUBLE,       -- (user, target) pairs generated / wall time (NULL: none generated)
    posters          INTEGER,      -- selected posters written by this run
    mean_z           DOUBLE,       -- over this run's selected posters
    mean_d_p         DOUBLE,
    mean_d_t         DOUBLE,
    stages           JSON,         -- per stage: processed / skipped / failed / images
    gallery          VARCHAR,      -- the gallery page written at the end of the run
    flow_run_id      VARCHAR       -- Prefect flow run id, to find its artifacts
);
