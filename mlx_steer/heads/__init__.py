"""Attention heads: patterns recorded when asked, and each head's output and residual write."""

from .head_results import HeadResults, head_results, output_weight
from .patterns import AttentionPatterns, PatternRecording, attention_patterns, record_patterns

__all__ = ["AttentionPatterns", "HeadResults", "PatternRecording", "attention_patterns", "head_results",
           "output_weight", "record_patterns"]
