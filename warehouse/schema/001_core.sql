-- Core MovieLens tables, ingest bookkeeping and run ledger (DESIGN §4.2).
-- No primary keys on the big tables: uniqueness is enforced by the ingest (it rejects duplicates),
-- and ART indexes on 25M ratings would cost more than they protect.
create table if not exists movies (
    movie_id  integer not null,
    title     varchar,
    year      integer,            -- from a trailing "(YYYY)" or "(YYYY–YYYY)"; NULL when absent
    genres    varchar[],          -- "(no genres listed)" -> []
    ingest_id integer             -- ingest that last inserted or changed the row
);

create table if not exists ratings (
    user_id   integer not null,
    movie_id  integer not null,
    rating    double not null,    -- half stars 0.5 .. 5.0
    rated_at  timestamp not null, -- UTC, from epoch seconds
    ingest_id integer
);

create table if not exists tags (
    user_id   integer not null,
    movie_id  integer not null,
    tag       varchar not null,
    tagged_at timestamp not null,
    ingest_id integer
);

create table if not exists links (
    movie_id  integer not null,
    imdb_id   varchar,            -- zero padding kept as given
    tmdb_id   integer,            -- NULL when missing
    ingest_id integer
);

create table if not exists ingests (
    ingest_id     integer not null,
    source        varchar not null,
    source_sha256 varchar not null, -- of the four files with newlines normalised
    rows_read     bigint,
    rows_loaded   bigint,
    rows_rejected bigint,
    started_at    timestamp,
    finished_at   timestamp,
    changed_users bigint
);

-- per-file breakdown of ingests: rows_read = rows_loaded + rows_rejected for every file
create table if not exists ingest_files (
    ingest_id     integer not null,
    source_file   varchar not null,
    sha256        varchar,
    rows_read     bigint,
    rows_loaded   bigint,
    rows_rejected bigint
);

create table if not exists ingest_rejects (
    ingest_id   integer not null,
    source_file varchar not null,
    line_number bigint,            -- 1-based physical line; the header is line 1
    raw_line    varchar,
    reason      varchar not null
);

-- users whose ratings or tags were added or changed by an ingest (drives the nightly flow)
create table if not exists user_changes (
    ingest_id integer not null,
    user_id   integer not null
);

create table if not exists runs (
    run_id      varchar not null,
    flow        varchar not null,
    status      varchar not null,
    parameters  json,
    started_at  timestamp,
    finished_at timestamp
);

-- internal (underscore tables are never published): what readers currently see
create table if not exists _published (
    table_name   varchar not null,
    path         varchar not null,
    fingerprint  varchar not null,
    row_count    bigint,
    published_at timestamp
);

create table if not exists _superseded (
    path          varchar not null,
    superseded_at timestamp not null
);

-- tables changed by a committed transaction but not yet published (publish after a crash)
create table if not exists _publish_pending (
    table_name varchar not null
);
