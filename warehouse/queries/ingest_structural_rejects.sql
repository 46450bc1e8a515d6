-- Lines read_csv could not parse (wrong column count, non-numeric or negative ids, bad numbers, encoding),
-- one row per line with a readable reason.
insert into ingest_rejects
select $ingest_id, parse_filename(s.file_path), e.line,
       trim(e.csv_line, chr(13) || chr(10)),
       case when e.error_type in ('MISSING COLUMNS', 'TOO MANY COLUMNS')
                then 'wrong column count: expected ' || regexp_extract(e.error_message, 'Expected Number of Columns: (\d+)', 1)
                     || ', found ' || regexp_extract(e.error_message, 'Found: (\d+)', 1)
            when e.error_type = 'CAST' and e.column_name in ('userId', 'movieId', 'tmdbId')
                then 'bad id: ' || e.column_name || ' is not a non-negative integer'
            when e.error_type = 'CAST' and e.column_name = 'rating' then 'rating is not a number'
            when e.error_type = 'CAST' and e.column_name = 'timestamp' then 'unparseable timestamp'
            when e.error_type = 'INVALID ENCODING' then 'invalid encoding: the line is not UTF-8'
            else lower(e.error_type) || ': ' || e.error_message
       end
from rejects e
join reject_scans s using (scan_id, file_id)
qualify row_number() over (partition by e.scan_id, e.line order by e.column_idx nulls last) = 1;
