-- The current row of one object (its newest generation, unless deleted), with its
-- embedding.
-- params: @bucket STRING, @name STRING
-- placeholders: current
SELECT *
FROM {current}
WHERE bucket = @bucket AND name = @name
