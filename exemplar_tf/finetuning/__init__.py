"""Semi-supervised fine-tuning (NPID's 1 % / 10 % label experiments): an encoder plus a linear classifier trained
on a class-balanced labelled subset, beside the same recipe from the random network and from scratch."""
