"""What a run does with effects: its config (`config`), its workdir (`workdir`), the session
that builds data, model, mesh and compiled functions (`session`), the train step and loop
(`train_step`, `train`), checkpoints (`checkpoint`, `orbax_quiet`), health checks (`health`),
signals (`preemption`), metrics (`metrics`, `plot`) and sample files (`generate`)."""
