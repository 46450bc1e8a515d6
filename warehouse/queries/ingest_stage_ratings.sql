-- Parse ratings.csv with explicit types (UINTEGER ids reject non-numeric and negative ids as CAST errors).
create or replace temp table stg_ratings as
select userId as user_id, movieId as movie_id, rating, "timestamp" as ts
from read_csv($path, columns = {'userId': 'UINTEGER', 'movieId': 'UINTEGER', 'rating': 'DOUBLE', 'timestamp': 'BIGINT'},
              header = true, delim = ',', quote = '"', escape = '"',
              store_rejects = true, rejects_table = 'rejects', rejects_scan = 'reject_scans');
