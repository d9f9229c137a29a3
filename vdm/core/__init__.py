"""The pure mathematics of variational diffusion: functions of arrays and small Flax modules,
no effects (no files, no devices, no config parsing).

- `diffusion`: α, σ, SNR from γ; q(z_t | x); the posterior q(z_s | z_t, x); head conversions;
- `schedules`: γ(t) (fixed linear, cosine, learned scalar, the monotone network γ_η);
- `elbo`: the variational bound's terms (reconstruction, prior, diffusion; continuous and T
  steps) and the encodings of integer data;
- `objectives`: weighted ELBOs and the importance distributions p(λ);
- `gmm`: the exact denoiser of a Gaussian mixture, for tests with analytic answers.
"""
