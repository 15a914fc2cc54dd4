"""BestMatch's face: the `bestmatch` command and what it runs, in parts that import one way.

- `cli`: the command line, one module per command group (the console script is
  `bestmatch.cli:app`; `python -m bestmatch` runs it too);
- `demo`: `bestmatch demo` and its HTML report;
- `benchmarks`: `bestmatch bench flow|serve|training`;
- `consistency`: served features against the offline change log;
- `simulator`: the marketplace simulator;
- `services`: the processes the commands start (a local Redis, Feast's registry, the stream and
  the service as child processes);
- `console`: the terminal output they share.
"""
