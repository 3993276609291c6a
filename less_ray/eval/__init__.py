"""LESS step 4's yardstick: BBH, MMLU and TydiQA evaluation as LESS runs it, plus demo tasks."""
