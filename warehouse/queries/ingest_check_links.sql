-- Semantic checks for parsed links: ids, unknown movies, duplicates (first kept).
insert into bad_rows
select 'links.csv', rowid,
       case when movie_id is null or imdb_id is null then 'missing value'
            when movie_id = 0 then 'bad id: movieId must be positive'
            when movie_id > 2147483647 then 'bad id: movieId must be below 2^31'
            when not regexp_full_match(imdb_id, '[0-9]+') then 'bad id: imdbId is not numeric'
            when tmdb_id is not null and (try_cast(tmdb_id as integer) is null or tmdb_id like '-%') then 'bad id: tmdbId is not a non-negative integer'
            when movie_id not in (select movie_id from movies) then 'unknown movieId'
       end as reason
from stg_links
where reason is not null;

insert into bad_rows
select 'links.csv', pos, 'duplicate movieId: the first one was kept'
from (select rowid as pos, row_number() over (partition by movie_id order by rowid) as rn
      from stg_links
      where movie_id in (select movie_id from stg_links group by movie_id having count(*) > 1)
        and rowid not in (select pos from bad_rows where source_file = 'links.csv'))
where rn > 1;
