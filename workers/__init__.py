"""Dramatiq workers: AI enrichment of stored messages."""
