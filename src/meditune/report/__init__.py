"""The self-contained HTML report of a run (report.html): what ran, metrics with CIs, plots, samples."""
