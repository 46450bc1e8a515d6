-- Pipeline tables (issue 6): lineage, the work ledger, chunk commits and the method's outputs.
-- Idempotent DDL. One row per natural key is kept by the pipeline's commit (delete + insert in one
-- transaction); earlier values stay traceable through run_id -> runs.

-- runs is created by 001_core (run_id, flow, status, parameters, started_at, finished_at);
-- the pipeline adds its lineage columns.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS checkpoints JSON;       -- {"llm": fingerprint, "sd": ..., "clip": ...}
ALTER TABLE runs ADD COLUMN IF NOT EXISTS prompt_version VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS code_version VARCHAR;    -- git sha or package version
ALTER TABLE runs ADD COLUMN IF NOT EXISTS counts JSON;             -- per stage: processed / skipped / failed

-- What is done is decided here, never by Prefect's database.
CREATE TABLE IF NOT EXISTS work_ledger (
    stage        VARCHAR,         -- item_keywords | preferences | generate | score
    item_key     VARCHAR,         -- movie id, user id, or "user:target"
    fingerprint  VARCHAR,         -- hash of every input of the stage for this item
    status       VARCHAR,         -- done | failed
    error        VARCHAR,         -- reason when failed
    attempts     INTEGER,
    run_id       VARCHAR,
    chunk        INTEGER,
    updated_at   TIMESTAMP
);

-- One row per committed (run, stage, chunk): a retried commit of the same chunk is a no-op.
CREATE TABLE IF NOT EXISTS chunk_commits (
    run_id        VARCHAR,
    stage         VARCHAR,
    chunk         INTEGER,
    rows_written  INTEGER,
    committed_at  TIMESTAMP
);

CREATE TABLE IF NOT EXISTS item_keywords (
    movie_id     INTEGER,
    keywords     VARCHAR[],
    raw_output   VARCHAR,
    parse_ok     BOOLEAN,
    run_id       VARCHAR
);

CREATE TABLE IF NOT EXISTS user_preferences (
    user_id              INTEGER,
    keywords             VARCHAR[],
    raw_output           VARCHAR,
    history_fingerprint  VARCHAR,
    history_movie_ids    INTEGER[],
    parse_ok             BOOLEAN,
    run_id               VARCHAR
);

CREATE TABLE IF NOT EXISTS preference_embeddings (
    user_id              INTEGER,
    history_fingerprint  VARCHAR,
    n_tokens             INTEGER,
    dim                  INTEGER,
    path                 VARCHAR,  -- .npy under <warehouse>/embeddings/, relative to the warehouse
    run_id               VARCHAR
);

CREATE TABLE IF NOT EXISTS generations (
    generation_id    VARCHAR,
    run_id           VARCHAR,
    user_id          INTEGER,
    target_movie_id  INTEGER,
    candidate        INTEGER,
    seed             BIGINT,
    weight           DOUBLE,       -- preference keyword weight w of this candidate
    prompt           VARCHAR,
    negative_prompt  VARCHAR,
    steps            INTEGER,
    height           INTEGER,
    width            INTEGER,
    image_path       VARCHAR,      -- images/<sha[:2]>/<sha>.png, relative to the warehouse
    image_sha256     VARCHAR
);

CREATE TABLE IF NOT EXISTS scores (
    generation_id    VARCHAR,
    run_id           VARCHAR,
    user_id          INTEGER,
    target_movie_id  INTEGER,
    d_p              DOUBLE,
    d_t              DOUBLE,
    alpha            DOUBLE,
    z                DOUBLE,
    selected         BOOLEAN
);
