"""Who may call the distribution: user tokens (``tokens``) and the engine workers' credential (``worker``).

Users authenticate through Llama Stack's own ``server.auth`` (a ``custom`` provider whose endpoint
is this server's ``/v1/scalarlm/auth/validate``, checked against the token file); workers present
the worker credential from the shared state root on the worker protocol's routes.
"""
