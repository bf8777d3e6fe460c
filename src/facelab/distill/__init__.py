"""Hard-sample distillation: the DDL loss (ddl.py), easy/hard batches (sampling.py), histograms
(plots.py)."""
