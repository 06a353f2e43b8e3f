"""Attention heads: patterns recorded when asked, each head's output and residual write, and its
direct logit attribution."""

from .head_results import HeadResults, head_results, head_z_site, output_weight, split_heads
from .iti import HeadProbes, fit_head_probes, probe_heads
from .logit_attribution import LogitAttribution, logit_attribution
from .patterns import AttentionPatterns, PatternRecording, attention_patterns, record_patterns
from .scores import head_scores, induction_scores, previous_token_scores, repeated_random_tokens, sink_scores
from .scores_table import HeadScore, HeadScoreTable
from .steering import add_to_heads, head_shape, padded_head_vector

__all__ = ["AttentionPatterns", "HeadResults", "PatternRecording", "add_to_heads", "attention_patterns", "head_results",
           "head_shape", "padded_head_vector", "HeadProbes", "fit_head_probes", "probe_heads", "LogitAttribution", "logit_attribution",
           "head_z_site", "output_weight", "record_patterns", "split_heads",
           "HeadScore", "HeadScoreTable", "head_scores", "induction_scores", "previous_token_scores",
           "repeated_random_tokens", "sink_scores"]
