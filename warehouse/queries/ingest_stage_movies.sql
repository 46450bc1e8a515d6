-- Parse movies.csv with explicit types; malformed lines go to the session rejects tables.
create or replace temp table stg_movies as
select movieId as movie_id, title, genres
from read_csv($path, columns = {'movieId': 'UINTEGER', 'title': 'VARCHAR', 'genres': 'VARCHAR'},
              header = true, delim = ',', quote = '"', escape = '"',
              store_rejects = true, rejects_table = 'rejects', rejects_scan = 'reject_scans');
