-- Semantic checks for parsed ratings; of duplicate (userId, movieId) ratings the newest is kept.
insert into bad_rows
select 'ratings.csv', rowid,
       case when user_id is null or movie_id is null or rating is null or ts is null then 'missing value'
            when user_id = 0 or movie_id = 0 then 'bad id: userId and movieId must be positive'
            when user_id > 2147483647 or movie_id > 2147483647 then 'bad id: userId and movieId must be below 2^31'
            when not (rating between 0.5 and 5.0 and rating * 2 = round(rating * 2))
                then 'rating is not a half star between 0.5 and 5.0'
            when ts < 0 or ts > 32503680000 then 'timestamp out of range'
            when movie_id not in (select movie_id from movies) then 'unknown movieId'
       end as reason
from stg_ratings
where reason is not null;
