"""Llama Stack providers for ScalarLM: thin adapters that translate stack calls into the core."""
