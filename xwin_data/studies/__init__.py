"""Studies people learn from: judge reliability, best-of-n curves, data scaling. Each writes a results table
(Parquet + JSON) and PNGs under an output folder (default ``<catalog>/studies/<study>``)."""
