"""Model converters, each runnable as `python -m converters.NAME`."""
