"""Attention heads: patterns recorded when asked, and each head's output and residual write."""

from .head_results import HeadResults, head_results, head_z_site, output_weight, split_heads
from .patterns import AttentionPatterns, PatternRecording, attention_patterns, record_patterns

__all__ = ["AttentionPatterns", "HeadResults", "PatternRecording", "attention_patterns", "head_results",
           "head_z_site", "output_weight", "record_patterns", "split_heads"]
