"""Scores -> decisions: the threshold as one value (:mod:`~siamface.decide.threshold`: where
it came from, what it means, the one range rule) and the two decisions built on it, 1:1
(:func:`~siamface.decide.verify.decide_pair`: two faces, or a face and a claimed identity) and
1:N (:func:`~siamface.decide.open_set.decide_open_set`: a known person or "unknown").
"""
