-- The k current objects nearest to an object already in the table (its current
-- embedding), by exact cosine distance over UNNEST; the object itself comes first
-- (distance 0). Same cost as nearest_neighbours.sql: a full read of the embeddings.
-- params: @bucket STRING, @name STRING, @k INT64
-- placeholders: current
WITH query AS (
  SELECT
    embedding AS query_embedding,
    model_fingerprint AS query_fingerprint,
    (SELECT SQRT(SUM(y * y)) FROM UNNEST(embedding) AS y) AS query_norm
  FROM {current}
  WHERE bucket = @bucket AND name = @name
),
scored AS (
  SELECT
    c.bucket, c.name, c.generation, c.source, c.content_type, c.width, c.height,
    c.format, c.model_fingerprint, c.vector_uri, c.vector_index, c.event_time, c.processing_time,
    (SELECT SUM(x * y)
     FROM UNNEST(c.embedding) AS x WITH OFFSET AS i
     JOIN UNNEST(q.query_embedding) AS y WITH OFFSET AS j ON i = j) AS dot,
    (SELECT SQRT(SUM(x * x)) FROM UNNEST(c.embedding) AS x) AS norm,
    q.query_norm
  FROM {current} AS c
  CROSS JOIN query AS q
  WHERE c.model_fingerprint = q.query_fingerprint
    AND ARRAY_LENGTH(c.embedding) = ARRAY_LENGTH(q.query_embedding)
)
SELECT
  bucket, name, generation, source, content_type, width, height, format,
  model_fingerprint, vector_uri, vector_index, event_time, processing_time,
  1 - dot / (norm * query_norm) AS distance
FROM scored
WHERE norm > 0
ORDER BY distance, bucket, name
LIMIT @k
