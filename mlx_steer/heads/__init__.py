"""Attention heads: patterns recorded when asked, and each head's output and residual write."""

from .patterns import AttentionPatterns, PatternRecording, attention_patterns, record_patterns

__all__ = ["AttentionPatterns", "PatternRecording", "attention_patterns", "record_patterns"]
