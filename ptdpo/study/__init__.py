"""The learning-signal study on the synthetic testbed (issue #8): PTD-PO vs GRPO vs
answer-conditioned distillation vs KL masking alone, from one hint-sensitive base model.

- ``base_model``: the warm-start recipe that gives the tiny model an in-context use for hints, and
  the with-hint vs without-hint accuracy check;
- ``arms``: the study config (arms x seeds) and each branch's training config;
- ``tracking``: per-item group accuracy over training (which all-fail groups became solvable);
- ``report``: curves with seed spread, final-accuracy tables and the plots of the study card.
"""
