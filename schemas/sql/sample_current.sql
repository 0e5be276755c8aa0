-- A repeatable sample of @n current embeddings of one model, for maps and
-- exploration: rows ordered by a hash of their row_key, so the same rows come back
-- every time and a larger @n extends a smaller one. (WHERE RAND() < fraction is
-- cheaper to sort but different on every run.) It reads the whole embedding column.
-- params: @model_fingerprint STRING, @n INT64
-- placeholders: current
SELECT
  row_key, bucket, name, generation, source, content_type, size_bytes, width, height,
  format, model_fingerprint, event_time, processing_time, embedding
FROM {current}
WHERE model_fingerprint = @model_fingerprint
  AND ARRAY_LENGTH(embedding) > 0
ORDER BY FARM_FINGERPRINT(row_key)
LIMIT @n
