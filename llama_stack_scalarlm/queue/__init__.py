"""The durable request queue: clients enqueue, engine workers lease, results come back."""
