-- requires: VECTOR_SEARCH (BigQuery; the emulator has no vector search)
-- The k current objects nearest to an object already in the table, with VECTOR_SEARCH
-- (cosine). See vector_search.sql for how the index is used and why top_k
-- candidates are fetched for @k results; nearest_neighbours_of_object.sql is the exact
-- fallback that runs everywhere.
-- params: @bucket STRING, @name STRING, @model_fingerprint STRING, @k INT64
-- placeholders: embeddings, current, top_k
SELECT
  c.bucket, c.name, c.generation, c.source, c.content_type, c.width, c.height,
  c.format, c.model_fingerprint, c.vector_uri, c.vector_index, c.event_time, c.processing_time,
  hit.distance
FROM VECTOR_SEARCH(
  (SELECT row_key, embedding
   FROM {embeddings}
   WHERE event_type = 'OBJECT_FINALIZE'
     AND model_fingerprint = @model_fingerprint),
  'embedding',
  (SELECT embedding FROM {current} WHERE bucket = @bucket AND name = @name),
  top_k => {top_k},
  distance_type => 'COSINE'
) AS hit
JOIN {current} AS c ON c.row_key = hit.base.row_key
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (PARTITION BY c.bucket, c.name ORDER BY hit.distance) = 1
ORDER BY hit.distance, c.bucket, c.name
LIMIT @k
