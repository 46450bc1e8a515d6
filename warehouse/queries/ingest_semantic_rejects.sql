-- Rows rejected after parsing, with their physical line: the k-th parsed row is the k-th data line
-- that read_csv did not reject (blank lines are skipped by the parser and have raw = NULL here).
insert into ingest_rejects
with rejected_lines as (
    select e.line
    from rejects e join reject_scans s using (scan_id, file_id)
    where parse_filename(s.file_path) = $file
),
data_lines as (
    select line_number, raw, row_number() over (order by line_number) - 1 as pos
    from raw_lines
    where line_number > 1 and raw is not null and trim(raw) <> ''
      and line_number not in (select line from rejected_lines)
)
select $ingest_id, $file, d.line_number, d.raw, b.reason
from bad_rows b
join data_lines d using (pos)
where b.source_file = $file;
