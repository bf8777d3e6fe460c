"""Evaluation reports: markdown tables (tables.py), plots (plots.py), the self-contained
index.html (html.py) and the report folder of each command (folders.py)."""
