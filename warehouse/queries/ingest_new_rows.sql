-- The good rows of each file in warehouse shape (views: nothing is copied until the upsert).
create or replace temp view new_movies as
select movie_id::integer as movie_id,
       rtrim(title) as title,
       try_cast(nullif(regexp_extract(rtrim(title), '\((\d{4})(?:[–-]\d{0,4})?\)$', 1), '') as integer) as year,
       case when genres = '(no genres listed)' then []::varchar[] else string_split(genres, '|') end as genres
from stg_movies s
anti join (select pos from bad_rows where source_file = 'movies.csv') b on b.pos = s.rowid;

create or replace temp view new_links as
select movie_id::integer as movie_id, imdb_id, tmdb_id::integer as tmdb_id
from stg_links s
anti join (select pos from bad_rows where source_file = 'links.csv') b on b.pos = s.rowid;

create or replace temp view new_ratings as
select user_id::integer as user_id, movie_id::integer as movie_id, rating, make_timestamp(ts * 1000000) as rated_at
from stg_ratings s
anti join (select pos from bad_rows where source_file = 'ratings.csv') b on b.pos = s.rowid;

create or replace temp view new_tags as
select user_id::integer as user_id, movie_id::integer as movie_id, tag, make_timestamp(ts * 1000000) as tagged_at
from stg_tags s
anti join (select pos from bad_rows where source_file = 'tags.csv') b on b.pos = s.rowid;
