"""Exports: a run as a file other tools run (GGUF for llama.cpp, Ollama, LM Studio)."""
