"""The run report: one self-contained HTML page with plots of every stage's outputs."""
