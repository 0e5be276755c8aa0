"""The model: ResNet50 behind Beam's RunInference, its weights, its ONNX Runtime graph,
and new weights while the job runs."""
