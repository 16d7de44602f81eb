"""Multi-stage workflows in one job; a rerun skips the stages already finished.

- ``sft_then_ppo``: SFT, then PPO/GRPO from the merged SFT model;
- ``text_to_chat``: raw text -> tokenizer -> pretrain -> instruction tuning -> upload;
- ``stages``: their stage records (``stages.json`` in the run folder).
"""
