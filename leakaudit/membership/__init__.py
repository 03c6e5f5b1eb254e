"""Membership inference with reference models: the recipe, the training, the splits, the attacks, the rows.

The loss threshold is the weakest membership test. Reference models trained
like the target calibrate the signal per image (LiRA, RMIA); see
``docs/membership.md`` for what each attack computes and how to read it.
"""
