"""``react report``: results.py reads result files and lays out the tables,
figures.py draws the PNGs, render.py writes Markdown and HTML, build.py puts a
report directory together (atomically)."""
