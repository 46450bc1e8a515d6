-- Semantic checks for parsed movies; the first of duplicate movieIds is kept.
insert into bad_rows
select 'movies.csv', rowid,
       case when movie_id is null or title is null or genres is null then 'missing value'
            when movie_id = 0 then 'bad id: movieId must be positive'
            when movie_id > 2147483647 then 'bad id: movieId must be below 2^31'
       end
from stg_movies
where movie_id is null or title is null or genres is null or movie_id = 0 or movie_id > 2147483647;

insert into bad_rows
select 'movies.csv', pos, 'duplicate movieId: the first one was kept'
from (select rowid as pos, row_number() over (partition by movie_id order by rowid) as rn
      from stg_movies
      where movie_id in (select movie_id from stg_movies group by movie_id having count(*) > 1)
        and rowid not in (select pos from bad_rows where source_file = 'movies.csv'))
where rn > 1;
