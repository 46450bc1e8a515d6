-- One row per finished soft-prompt training run (a re-run with the same run id replaces it).
DELETE FROM soft_prompt_checkpoints WHERE run_id = $run_id;
INSERT INTO soft_prompt_checkpoints
VALUES ($run_id, $path, $out_dir, $steps, $examples, $final_train_loss, $first_eval_loss, $final_eval_loss,
        $llm_fingerprint, $sd_fingerprint, $prompt_version, now()::TIMESTAMP)
