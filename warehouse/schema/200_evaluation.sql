-- The method's training and evaluation (issue 5, items 6-7). Idempotent DDL.

-- pmg evaluate: one row per (run, variant, user, target, candidate, alpha). Every candidate's raw
-- scores are kept; `selected` marks the argmax of z at that alpha within (run, variant, user, target).
-- d_p / d_t are the scores z was computed from: the CLIP text scores, blended with the image-image
-- scores when posters exist (tasks.pmg.scoring.blend_similarity). NULL = not measured.
CREATE TABLE IF NOT EXISTS evaluations (
    run_id           VARCHAR,
    variant          VARCHAR,      -- baseline | pmg | keywords | soft
    user_id          INTEGER,
    target_movie_id  INTEGER,
    candidate        INTEGER,
    seed             BIGINT,
    weight           DOUBLE,       -- preference keyword weight w (0 when the variant has no keywords)
    w_soft           DOUBLE,       -- scale of the soft tokens (NULL when the variant has none)
    alpha            DOUBLE,
    d_p              DOUBLE,
    d_t              DOUBLE,
    z                DOUBLE,
    selected         BOOLEAN,
    d_p_text         DOUBLE,       -- CLIP 100*cos(image, preference keyword text)
    d_t_text         DOUBLE,       -- CLIP 100*cos(image, target keyword text)
    d_p_image        DOUBLE,       -- CLIP 100*cos(image, history posters), mean
    d_t_image        DOUBLE,       -- CLIP 100*cos(image, target poster)
    ssim_target      DOUBLE,
    ssim_history     DOUBLE,       -- mean over the history posters
    lpips_target     DOUBLE,       -- NULL: LPIPS is not computed in this version
    lpips_history    DOUBLE,
    prompt           VARCHAR,
    image_path       VARCHAR,      -- relative to the run's output directory
    created_at       TIMESTAMP
);

-- pmg train-soft-prompt: one row per finished training run.
CREATE TABLE IF NOT EXISTS soft_prompt_checkpoints (
    run_id           VARCHAR,
    path             VARCHAR,      -- the trained soft_prompt.safetensors
    out_dir          VARCHAR,
    steps            INTEGER,
    examples         INTEGER,
    final_train_loss DOUBLE,
    first_eval_loss  DOUBLE,
    final_eval_loss  DOUBLE,
    llm_fingerprint  VARCHAR,
    sd_fingerprint   VARCHAR,
    prompt_version   VARCHAR,
    created_at       TIMESTAMP
);
