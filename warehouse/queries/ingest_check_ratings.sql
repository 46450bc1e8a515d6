-- Semantic checks for parsed ratings; of duplicate (userId, movieId) ratings the newest is kept.
insert into bad_rows
select 'ratings.csv', rowid,
       case when user_id is null or movie_id is null or rating is null or ts is null then 'missing value'
            when user_id = 0 or movie_id = 0 then 'bad id: userId and movieId must be positive'
            when not (rating between 0.5 and 5.0 and rating * 2 = round(rating * 2))
                then 'rating is not a half star between 0.5 and 5.0'
            when ts < 0 or ts > 32503680000 then 'timestamp out of range'
            when movie_id not in (select movie_id from movies) then 'unknown movieId'
       end as reason
from stg_ratings
where reason is not null;

insert into bad_rows
select 'ratings.csv', pos, 'duplicate (userId, movieId) rating: the newest one was kept'
from (select s.rowid as pos, row_number() over (partition by s.user_id, s.movie_id order by s.ts desc, s.rowid desc) as rn
      from stg_ratings s
      semi join (select user_id, movie_id from stg_ratings group by all having count(*) > 1) d using (user_id, movie_id)
      where s.rowid not in (select pos from bad_rows where source_file = 'ratings.csv'))
where rn > 1;
