-- Parse links.csv with explicit types; ids stay text until checked (imdbId keeps its zero padding).
create or replace temp table stg_links as
select movieId as movie_id, imdbId as imdb_id, tmdbId as tmdb_id
from read_csv($path, columns = {'movieId': 'UINTEGER', 'imdbId': 'VARCHAR', 'tmdbId': 'VARCHAR'},
              header = true, delim = ',', quote = '"', escape = '"',
              store_rejects = true, rejects_table = 'rejects', rejects_scan = 'reject_scans');
