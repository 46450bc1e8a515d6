-- Every physical line of a file, numbered from 1 (the header), to locate rows rejected after parsing:
-- its position in this scan (scan_no) and whether it is blank. The text is not kept (a 32M-line file's
-- text would take gigabytes); ingest_semantic_rejects reads it again for the rejected lines only.
-- Lines this raw scan cannot read (invalid UTF-8) are dropped here and renumbered by ingest_raw_renumber.
drop table if exists raw_rejects;
drop table if exists raw_reject_scans;
create or replace temp table raw_lines as
select n as scan_no, n as line_number, raw is null or trim(raw) = '' as blank
from (select row_number() over () as n, raw
      from read_csv($path, columns = {'raw': 'VARCHAR'}, header = false, delim = $delim, quote = '', escape = '',
                    store_rejects = true, rejects_table = 'raw_rejects', rejects_scan = 'raw_reject_scans'));
