"""The pure mathematics of variational diffusion: functions of arrays and small Flax modules,
no effects (no files, no devices, no config parsing).

- `diffusion`: α, σ, SNR from γ; q(z_t | x); the posterior q(z_s | z_t, x); head conversions;
- `schedules`: γ(t) (fixed linear, cosine, learned scalar, the monotone network γ_η, and a
  polynomial per data dimension);
- `encoding`: integer data in model space (`Encoding`) and the discrete decoder p(x | z₀);
- `elbo`: the variational bound's terms (reconstruction, prior, diffusion; continuous and T
  steps);
- `latent`: the auxiliary latent of an input-conditional schedule and its KL;
- `objectives`: weighted ELBOs and the importance distributions p(λ);
- `gmm`: the exact denoiser of a Gaussian mixture, for tests with analytic answers.
"""
