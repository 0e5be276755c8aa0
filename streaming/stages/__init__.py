"""The per-image stages between a source and the model: filter the object events, batch
the references, load the bytes and preprocess them into the model's 224x224 input."""
