"""Where the job writes: each output is a `Sink`; the pipeline iterates over them."""
