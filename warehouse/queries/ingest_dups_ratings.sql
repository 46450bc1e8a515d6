-- Of duplicate (userId, movieId) ratings the newest is kept; the others are rejected.
insert into bad_rows
select 'ratings.csv', pos, 'duplicate (userId, movieId) rating: the newest one was kept'
from (select s.rowid as pos, row_number() over (partition by s.user_id, s.movie_id order by s.ts desc, s.rowid desc) as rn
      from stg_ratings s
      semi join (select user_id, movie_id from stg_ratings group by all having count(*) > 1) d using (user_id, movie_id)
      where s.rowid not in (select pos from bad_rows where source_file = 'ratings.csv'))
where rn > 1;
