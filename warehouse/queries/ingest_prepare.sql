-- Session scratch for one ingest: rows judged bad after parsing (pos = rowid in the staging table).
create or replace temp table bad_rows (source_file varchar, pos bigint, reason varchar);
