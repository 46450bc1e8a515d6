-- posters: the chosen image per (user, target) — the selected candidate of the newest run.
CREATE OR REPLACE VIEW posters AS
WITH selected AS (
    SELECT s.user_id, s.target_movie_id, s.generation_id, s.z, s.run_id
    FROM scores AS s
    WHERE s.selected
),
ranked AS (
    SELECT sel.*, g.image_path, g.image_sha256, g.seed, g.prompt,
           row_number() OVER (PARTITION BY sel.user_id, sel.target_movie_id
                              ORDER BY r.started_at DESC NULLS LAST, sel.run_id DESC) AS rn
    FROM selected AS sel
    JOIN generations AS g USING (generation_id)
    LEFT JOIN runs AS r ON r.run_id = sel.run_id
),
final AS (
    SELECT user_id, target_movie_id, generation_id, image_path, z, image_sha256, seed, prompt, run_id
    FROM ranked
    WHERE rn = 1
)
SELECT * FROM final;
