"""Safety: the AILuminate hazard taxonomy, the guard's prompt format, shields' verdicts, and the
AILuminate benchmark's prompt sets and grading. No torch: verdicts come from a served guard model
through the queue, like any other request."""
