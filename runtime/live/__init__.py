"""A live spoken conversation: endpointing, incremental prefill while the user speaks, barge-in."""
