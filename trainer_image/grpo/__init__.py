"""GRPO post-training of the byte-level LLaMA: a policy, a frozen reference, a verifiable task, and
checkpoints that resume bitwise (`python -m trainer_image.grpo --config C`; docs/trainer.md, GRPO)."""
