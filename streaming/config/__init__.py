"""What the job and the command-line tools are told, and the checks on it before anything
runs: flags, Beam options, resource names, the CLI conventions every tool shares and the
worker memory rule. The checks against what exists (`streaming/preflight.py`) sit above
the model and the clients they use.

`publisher/` and `analysis/` import `cli` and `names` from here: the pipeline owns them,
and the tools depend on the pipeline, never the other way round.
"""
