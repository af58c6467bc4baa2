"""Metric analysis (AnalysisTemplate / AnalysisRun): arrives with the analysis issue."""
