"""One router per resource: ranking, health, metrics."""
