"""Defaults shared by every experiment config; each config overrides what it needs.

Every field is one ablation axis or one setting of the run; `vdm.run.config.validate` checks them
and names the allowed values when one is wrong.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # see vdm.data.DATASETS
    c.data.vocab_size = 17
    c.data.data_dir = ""  # "" = the source's default location
    c.data.random_flip = False  # horizontal flips, with a conditioning flag for the network
    c.data.n_test = 0  # held-out examples for sources without a test split (0 = source default)
    c.data.n_examples = 0  # generated data (swirl2d, gaussian_mixture): train size (0 = default)
    c.data.download = False  # fetch a missing archive from its publisher (needs internet)
    c.data.mirror = ""  # a base URL serving the archives by name, instead of the publisher's
    # check the archives' SHA-256 and split sizes (vdm/data/archives.py); False for archives
    # made oneself, and every eval record then says the data were unverified
    c.data.verify = True
    c.data.encoding = "bin_centres"  # bin_centres (2x+1)/V − 1 | standardize (x − mean)/std

    c.model = ml_collections.ConfigDict()
    c.model.network = "unet"  # unet | mlp
    c.model.head = "eps"  # eps | x0 | v | score
    c.model.n_embd = 128
    c.model.n_layer = 32
    c.model.with_attention = False  # attention after every block (always in the middle)
    # Accelerator paths (ScoreUNet): "bfloat16" computes convolutions and matmuls in bf16 with
    # float32 parameters, optimizer, loss and γ; remat recomputes each residual block in the
    # backward pass (less activation memory, same gradients).
    c.model.dtype = "float32"
    c.model.remat = False
    # auto | true | false: the down and up stacks of residual blocks each as one scan over
    # stacked parameters (compiles in a fraction of the time at depth 32); auto scans on
    # accelerators, not on CPU. Checkpoints hold the same parameters either way.
    c.model.scan_blocks = "auto"
    c.model.dropout = 0.1
    c.model.fourier_features = True
    # Features at 2ⁿ · 2π for n = top − octaves + 1 … top (the official convention); top None =
    # log₂(vocab/2), whose period is one bin: n = 6, 7 for 8-bit data, as the official ScoreUNet.
    c.model.fourier_top_n = ml_collections.config_dict.placeholder(float)
    c.model.fourier_octaves = 2
    c.model.fourier_gate = "none"  # none | coherence: scale by exp(−½ ω² σ_t²)
    c.model.base_measure_skip = True  # ε̂ = z + net (ε head only)
    # How data.random_flip's flag enters the ScoreUNet: embed (a learned embedding added to the
    # time's) | concat (joined to the time embedding, as google-research/vdm's dense0)
    c.model.flag_input = "embed"
    # The normalised γ_t as an extra input channel of a scalar schedule's denoiser, as a γ per
    # dimension always has it: the control that separates that input from the schedule.
    c.model.gamma_map_input = False
    c.model.n_timesteps = 0  # 0 = continuous time (eq. 17), T > 0 = T discrete steps (eq. 14)
    c.model.antithetic_time = True
    c.model.class_conditional = False
    c.model.label_dropout = 0.1  # label → null label with this probability (classifier-free)

    # Training objective (Kingma & Gao 2023): the diffusion term weighted by w(λ) under a noise
    # distribution p(λ), λ = −γ; eval always reports the true ELBO (w = 1) in bpd.
    c.objective = ml_collections.ConfigDict()
    c.objective.weighting = "elbo"  # see vdm.core.objectives.WEIGHTINGS
    c.objective.weighting_shift = 0.0  # b of sigmoid(b − λ)
    c.objective.noise_dist = "uniform_t"  # see vdm.core.objectives.NOISE_DIST_NAMES
    c.objective.noise_shift = 0.0  # shifts p(λ) along λ
    c.objective.adaptive_bins = 100  # noise_dist='adaptive': histogram bins over [λ_min, λ_max]
    c.objective.adaptive_decay = 0.99  # ... and the EMA decay of each bin's mean loss

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "learned_net"  # see vdm.core.schedules.SCHEDULES
    c.schedule.gamma_min = -13.3
    c.schedule.gamma_max = 5.0
    c.schedule.n_features = 1024
    c.schedule.endpoints = "per_dim"  # learned_multivariate: γ₀, γ₁ per_dim | shared
    # learned_multivariate, input-conditional (MuLAN): γ(t; c), c counts latent_draws draws of
    # latent_size categories from an encoder of x (vdm/core/latent.py); KL(q(c|x)‖p(c)) joins
    # the bound as the term 'latent'
    c.schedule.conditional = False
    c.schedule.latent_size = 50
    c.schedule.latent_draws = 15
    c.schedule.latent_temperature = 1.0  # the Gumbel-softmax relaxation's, for gradients
    c.schedule.encoder_embd = 32
    c.schedule.encoder_layers = 2
    c.schedule.variance_min = False  # variance-minimising gradient for the shape (learned_net)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 2e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.99
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01
    c.optimizer.warmup_steps = 0
    c.optimizer.decay = "none"  # none | cosine
    c.optimizer.grad_clip = 0.0  # global-norm clipping; 0 = off
    c.optimizer.ema_decay = 0.9999

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 128  # global, over all devices and hosts
    c.training.num_steps = 10_000_000
    c.training.steps_per_call = 1  # train steps per call of the train step (and per batch fetch)
    # How a call runs its steps: "scan" (one jitted lax.scan), "host" (one compiled step called
    # per step), "auto" (host on CPU, where XLA runs a step inside a loop far slower; else scan).
    c.training.loop = "auto"
    c.training.log_every = 100
    c.training.eval_every = 10_000
    c.training.save_every = 10_000
    c.training.max_to_keep = 3  # newest checkpoints kept, beside the one with the best eval bpd
    # Stop (saving nothing) when a log interval's mean train loss exceeds this many times the
    # running median of the intervals before it (vdm/run/health.py); 0 = off.
    c.training.spike_factor = 10.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    c.eval.use_ema = True
    c.eval.repeats = 1  # ELBO passes over the test split, each with fresh t and ε
    c.eval.elbo = True  # --mode=eval reports the ELBO bpd ...
    c.eval.pf_ode = False  # ... and/or the probability-flow ODE bpd (dequantized)
    c.eval.pf_ode_examples = 256  # first N test examples (0 = all): the ODE is costly
    c.eval.pf_ode_batch_size = 64
    # The PF-ODE bound on −log P(x): q(z₀ | x) inside x's bin (uniform | truncated_normal,
    # i-DODE's), and K draws of it in an importance-weighted bound (vdm/eval/dequantization.py)
    c.eval.dequantization = "uniform"
    c.eval.importance_samples = 1  # K; > 1 with hutchinson needs pf_ode_probes >= 4
    c.eval.pf_ode_trace = "hutchinson"  # hutchinson | exact (D JVPs: small data only)
    c.eval.pf_ode_probe = "rademacher"  # rademacher | gaussian
    c.eval.pf_ode_probes = 1  # Hutchinson probes per draw, averaged
    c.eval.matmul_precision = "highest"  # default | high | highest, for every eval estimator
    c.eval.pf_ode_solver = "tsit5"
    c.eval.pf_ode_rtol = 1e-5
    c.eval.pf_ode_atol = 1e-5
    # per_example: each example its own steps (results independent of the batch) | batch: the
    # batch as one ODE, one step size (score_sde's way; fewer steps, see likelihood.py)
    c.eval.pf_ode_step_control = "per_example"

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = "ancestral"  # see vdm.samplers.SAMPLERS
    c.sample.steps = 256  # sampler steps; for pf_ode 0 = adaptive (rtol, atol)
    c.sample.n_samples = 64
    c.sample.batch_size = 64
    c.sample.grid = "uniform_t"  # uniform_t | uniform_logsnr
    c.sample.eta = 0.0  # ddim: 0 deterministic, 1 ancestral
    c.sample.n_corrector = 1  # pc: Langevin steps per predictor step
    c.sample.snr = 0.16  # pc: the corrector's signal-to-noise ratio
    c.sample.solver = "tsit5"  # pf_ode: tsit5 | dopri5 | heun
    c.sample.rtol = 1e-5
    c.sample.atol = 1e-5
    c.sample.final_denoise = False  # Tweedie step x̂ = E[x | z₀] before decoding
    c.sample.guidance = 0.0  # classifier-free guidance w: 0 unconditional, 1 conditional
    # --mode=sample: FID against the test split in the features of the data's own classifier
    # (digits, mnist, fashion_mnist; trained once and cached, vdm/eval/fid.py)
    c.sample.fid = True
    # Its N: min(fid_n, test split, train split) samples against as many test images; more
    # than n_samples are drawn when needed (the grid shows the first n_samples).
    c.sample.fid_n = 10_000

    # Lossless compression by bits-back ANS along the T-step chain (--mode=compress|decompress).
    c.compress = ml_collections.ConfigDict()
    c.compress.steps = 1000  # T: the net codelength approaches the T-step ELBO
    c.compress.latent_bits = 2  # latent grid: 2^b bins per smallest standard deviation
    c.compress.range_stds = 8.0  # a latent's symbols span ± this many standard deviations
    c.compress.batch_size = 64  # images coded side by side (the first chunk pops clean bits)
    # Decode a .vdmz made on another platform (backend, jax/jaxlib/numpy/constriction versions,
    # XLA flags) anyway: ε̂ may differ in its last bits, and decoding then fails, writing nothing.
    c.compress.allow_platform_mismatch = False
    # A file any x86-64 CPU with AVX2 decodes: one core, AVX2, JAX on the CPU
    # (vdm/compress/portable.py; what it costs: docs/compression.md)
    c.compress.portable = False
    return c


SMOKE = {
    "model.n_embd": 8,
    "model.n_layer": 1,
    "schedule.n_features": 16,
    "training.batch_size": 4,
    "training.num_steps": 2,
    "training.steps_per_call": 1,
    "training.log_every": 1,
    "training.eval_every": 2,
    "training.save_every": 2,
    "eval.batch_size": 4,
    "sample.steps": 2,
    "sample.n_samples": 2,
    "sample.fid": False,
    "compress.steps": 4,
    "compress.batch_size": 4,
}


def smoke(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """Tiny sizes for tests (`:smoke`): SMOKE, then per-config `section__field=value`."""
    for dotted, value in {
        **SMOKE,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }.items():
        section, field = dotted.split(".")
        c[section][field] = value
    return c
