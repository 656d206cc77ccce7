"""Visual outputs built from result files: the HTML report (figures, gallery, failure
counts) and the HTML leaderboard. Figures use matplotlib's Agg canvas directly (no
pyplot state, no global rcParams changes)."""
