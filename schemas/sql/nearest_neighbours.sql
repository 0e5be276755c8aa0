-- The k current objects nearest to a query embedding, by exact cosine distance
-- (1 - cosine similarity, 0 = same direction), written by hand over UNNEST so that it
-- runs everywhere, the BigQuery emulator included. It reads every current embedding of
-- the model (2048 FLOAT64 = 16 KiB a row); for large tables see vector_search.sql.
-- Only rows of the same model fingerprint are comparable: pass the fingerprint of the
-- weights that embedded the query.
-- params: @query_embedding ARRAY<FLOAT64>, @model_fingerprint STRING, @k INT64
-- placeholders: current (the current_embeddings view, or its query inlined)
WITH scored AS (
  SELECT
    c.bucket, c.name, c.generation, c.source, c.content_type, c.width, c.height,
    c.format, c.model_fingerprint, c.vector_uri, c.vector_index, c.event_time, c.processing_time,
    (SELECT SUM(x * y)
     FROM UNNEST(c.embedding) AS x WITH OFFSET AS i
     JOIN UNNEST(@query_embedding) AS y WITH OFFSET AS j ON i = j) AS dot,
    (SELECT SQRT(SUM(x * x)) FROM UNNEST(c.embedding) AS x) AS norm
  FROM {current} AS c
  WHERE c.model_fingerprint = @model_fingerprint
    AND ARRAY_LENGTH(c.embedding) = ARRAY_LENGTH(@query_embedding)
)
SELECT
  bucket, name, generation, source, content_type, width, height, format,
  model_fingerprint, vector_uri, vector_index, event_time, processing_time,
  1 - dot / (norm * (SELECT SQRT(SUM(y * y)) FROM UNNEST(@query_embedding) AS y)) AS distance
FROM scored
WHERE norm > 0
ORDER BY distance, bucket, name
LIMIT @k
