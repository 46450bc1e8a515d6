-- Append the rows of relation `eval_rows` (registered by the caller; columns by name).
INSERT INTO evaluations BY NAME SELECT *, now()::TIMESTAMP AS created_at FROM eval_rows
