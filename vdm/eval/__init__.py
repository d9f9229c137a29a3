"""Evaluation over a dataset split: `likelihood` (ELBO and probability-flow bpd with their
standard errors) and `fid` (Fréchet distance in a classifier's feature space)."""
