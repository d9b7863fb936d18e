"""Stand-ins for files the tests cannot download: Phi-4-mini's tokenizer files (o200k.py) and
random-weight checkpoints in the real Hugging Face layout (checkpoint.py). The real config and
tokenizer JSON files they start from are copied in phi4_mini/. Nothing here is imported by the
runtime or the converter."""
