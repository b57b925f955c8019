"""Speculative decoding: proposers (draft model, n-gram) and exact rejection sampling."""
