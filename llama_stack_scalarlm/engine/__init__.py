"""Engine workers: processes that lease requests from the server's queue and run them on vLLM."""
