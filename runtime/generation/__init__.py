"""The generation loop of spec §8 and what it drives: sampling, noise, the flow solver, streamed segments."""
