"""For analysts: the shipped SQL (`schemas/sql/`), `embed-search` (search by image) and
`embed-map` (the embedding space as a PNG and an HTML page).

  sql.py        fills the SQL files' `{placeholders}` with validated table ids
  rows.py       current rows from a local output folder or from BigQuery
  search.py     embed-search: k nearest objects to an image or an object
  projection.py 2-D projections (PCA; t-SNE when scikit-learn is installed)
  render.py     the PNG (matplotlib) and the self-contained HTML page
  map.py        embed-map
"""
