"""The demo (`bestmatch demo`) and its report.

- `run`: `run_demo(settings, ...)`, the seven steps end to end;
- `prepare`: the events split into history and the live day, the demo's keys cleared in Redis;
- `live_day`: the last day streamed through the bus, its freshness timed;
- `open_jobs`: the open jobs ranked through the running service;
- `summary` and `report`: the headline figures, the HTML page, its PNGs and `report.json`.
"""
