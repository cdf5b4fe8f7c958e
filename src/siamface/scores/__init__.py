"""Embeddings -> scores -> metrics: pair scoring in bounded memory, verification metrics with
bootstrap intervals over identities, the LFW pairs protocol, plots, reports, model comparison.
"""
