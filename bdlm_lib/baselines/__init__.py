"""Baselines and controls that are neither a domain model alone nor an LLM run: GPT4SM (a domain
model fed the frozen LLM's text features, paper §5.3) and the candidate fine-tuning controls
(a domain model fine-tuned on BDLM's prompt candidates without the LLM)."""
