"""Evaluation over a dataset split: `likelihood` (ELBO and probability-flow bpd with their
standard errors; the estimators' dequantizations in `dequantization`, the records of how
each number was made in `records`) and `fid` (Fréchet distance in a classifier's feature space)."""
