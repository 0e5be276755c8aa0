-- The models behind the current embeddings: one row per (model_name,
-- model_fingerprint) with its object count. Embeddings are comparable only within one
-- fingerprint; embed-search and embed-map read this first.
-- params:
-- placeholders: current
SELECT
  model_name,
  model_fingerprint,
  COUNT(*) AS objects,
  MIN(processing_time) AS first_written,
  MAX(processing_time) AS last_written
FROM {current}
GROUP BY model_name, model_fingerprint
ORDER BY objects DESC, model_fingerprint
