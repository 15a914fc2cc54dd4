"""The marketplace simulator: a realistic, deterministic event stream (`bestmatch simulate`).

- `marketplace`: `simulate(days, seed, out, ...)` writes the stream as JSON Lines;
- `behaviour`: who is on the market and what they post, bid and decide (numpy, one seed);
- `vocabulary`: the words job titles and cover letters are made of.
"""

from bestmatch.simulator.marketplace import DEFAULT_START, SimulationReport, simulate

__all__ = ["DEFAULT_START", "SimulationReport", "simulate"]
