from bestmatch.cli import app

app(prog_name="bestmatch")
