-- Titles of the movies in $ids (INTEGER[]).
SELECT movie_id, title FROM movies WHERE list_contains($ids, movie_id)
