-- Every physical line of a file, numbered from 1 (the header), to locate rows rejected after parsing.
-- Lines this raw scan cannot read (invalid UTF-8) are dropped here and renumbered by ingest_raw_renumber.
drop table if exists raw_rejects;
drop table if exists raw_reject_scans;
create or replace temp table raw_lines as
select row_number() over () as line_number, raw
from read_csv($path, columns = {'raw': 'VARCHAR'}, header = false, delim = $delim, quote = '', escape = '',
              store_rejects = true, rejects_table = 'raw_rejects', rejects_scan = 'raw_reject_scans');
