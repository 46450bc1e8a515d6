-- Semantic checks for parsed tags; of duplicate (userId, movieId, tag) rows the newest is kept.
insert into bad_rows
select 'tags.csv', rowid,
       case when user_id is null or movie_id is null or tag is null or ts is null then 'missing value'
            when user_id = 0 or movie_id = 0 then 'bad id: userId and movieId must be positive'
            when user_id > 2147483647 or movie_id > 2147483647 then 'bad id: userId and movieId must be below 2^31'
            when ts < 0 or ts > 32503680000 then 'timestamp out of range'
            when movie_id not in (select movie_id from movies) then 'unknown movieId'
       end as reason
from stg_tags
where reason is not null;

insert into bad_rows
select 'tags.csv', pos, 'duplicate (userId, movieId, tag): the newest one was kept'
from (select s.rowid as pos, row_number() over (partition by s.user_id, s.movie_id, s.tag order by s.ts desc, s.rowid desc) as rn
      from stg_tags s
      semi join (select user_id, movie_id, tag from stg_tags group by all having count(*) > 1) d using (user_id, movie_id, tag)
      where s.rowid not in (select pos from bad_rows where source_file = 'tags.csv'))
where rn > 1;
