"""Other tools' models in and out: insightface checkpoints, face-embedding ONNX files."""
