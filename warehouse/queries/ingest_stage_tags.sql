-- Parse tags.csv with explicit types.
create or replace temp table stg_tags as
select userId as user_id, movieId as movie_id, tag, "timestamp" as ts
from read_csv($path, columns = {'userId': 'UINTEGER', 'movieId': 'UINTEGER', 'tag': 'VARCHAR', 'timestamp': 'BIGINT'},
              header = true, delim = ',', quote = '"', escape = '"',
              store_rejects = true, rejects_table = 'rejects', rejects_scan = 'reject_scans');
