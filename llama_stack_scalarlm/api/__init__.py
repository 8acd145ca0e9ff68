"""Llama Stack external APIs that ScalarLM adds to the stack (loaded through ``external_apis_dir``)."""
