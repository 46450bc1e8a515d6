-- Pairs out of (userId, movieId) order, in file order. MovieLens files are sorted, so 0 here proves there
-- are no duplicates without the costly hash aggregate of ingest_dups_ratings (lag over () keeps scan order).
select count(*) as out_of_order
from (select user_id::ubigint << 32 | movie_id as k, lag(user_id::ubigint << 32 | movie_id) over () as previous
      from stg_ratings)
where k <= previous;
