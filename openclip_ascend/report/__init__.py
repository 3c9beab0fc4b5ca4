"""Steps 6-7's outputs: the tables, plots and report.md, the published figures beside a run, and the atc variant sweep."""
