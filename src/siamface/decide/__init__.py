"""Scores -> decisions: thresholds (where they come from, what they mean) and the 1:1 verdicts
built on them (two faces, or a face and a claimed identity).
"""
