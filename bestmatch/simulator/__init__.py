"""The marketplace simulator: a realistic, deterministic event stream (`bestmatch simulate`).

- `marketplace`: `simulate(days, seed, out, ...)` writes the stream as JSON Lines;
- `behaviour`: who is on the market and what they post and bid (numpy, one seed);
- `decisions`: what clients do with the proposals, and how profiles follow;
- `market`: the market as columns;
- `lines`: its events rendered as JSON lines in time order, dirty ones slotted in;
- `vocabulary`: the words job titles and cover letters are made of.
"""

from bestmatch.simulator.marketplace import DEFAULT_START, SimulationReport, simulate

__all__ = ["DEFAULT_START", "SimulationReport", "simulate"]
