-- Rows rejected after parsing, with their physical line: the k-th parsed row is the k-th data line
-- that read_csv did not reject (blank lines are skipped by the parser). Their raw text comes from a
-- second scan of the file, numbered as ingest_raw_lines numbered it, keeping only those lines.
create or replace temp table bad_lines as
with rejected_lines as (
    select e.line
    from rejects e join reject_scans s using (scan_id, file_id)
    where parse_filename(s.file_path) = $file
),
data_lines as (
    select scan_no, line_number, row_number() over (order by line_number) - 1 as pos
    from raw_lines
    where line_number > 1 and not blank and line_number not in (select line from rejected_lines)
)
select d.scan_no, d.line_number, b.reason
from bad_rows b
join data_lines d using (pos)
where b.source_file = $file;

insert into ingest_rejects
select $ingest_id, $file, b.line_number, r.raw, b.reason
from (select row_number() over () as scan_no, raw
      from read_csv($path, columns = {'raw': 'VARCHAR'}, header = false, delim = $delim, quote = '', escape = '',
                    store_rejects = true, rejects_table = 'raw_rejects_again', rejects_scan = 'raw_reject_scans_again')) r
join bad_lines b using (scan_no);

drop table if exists raw_rejects_again;
drop table if exists raw_reject_scans_again;
