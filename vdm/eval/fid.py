"""Sample quality: the Fréchet distance between feature statistics of two image sets, in the
features of a small classifier the project trains itself (Heusel et al. 2017, with this
network in place of Inception, which needs a download and does not suit 8×8 or 28×28 grey).

FID = ‖μ_a − μ_b‖² + tr(C_a + C_b − 2 (C_a^{½} C_b C_a^{½})^{½}), computed in float64.

The classifier is trained on the training split of the data with a fixed seed and recipe,
and cached under the user's cache directory (`$VDM_CACHE_DIR`, else `$XDG_CACHE_HOME/vdm`,
else `~/.cache/vdm`) keyed by a hash of the recipe and the data, so every FID in a study uses
the same features; its test accuracy is stored beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from vdm import signals
from vdm.core import draws

FORMAT = 1
RECIPES = {  # per data set: what the classifier is trained with (see `train_classifier`)
    "digits": {"epochs": 40, "batch": 64, "lr": 2e-3, "shift": 1, "seed": 0},
    "mnist": {
        "epochs": 60,
        "batch": 128,
        "lr": 2e-3,
        "shift": 2.5,
        "rotate": 12,
        "scale": 0.1,
        "elastic": 34.0,
        "elastic_sigma": 4.0,
        "ema": 0.995,
        "dropout": 0.3,
        "widths": [48, 96],
        "weight_decay": 1e-4,
        "warmup_epochs": 1,
        "seed": 0,
    },
    "fashion_mnist": {"epochs": 8, "batch": 128, "lr": 1e-3, "shift": 2, "seed": 0},
}


class FeatureNet(nn.Module):
    """Two conv blocks (`widths` channels, 2× average pooling each) → 128 features → logits;
    dropout (training only) before and after the feature layer."""

    n_classes: int
    n_features: int = 128
    widths: tuple = (32, 64)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for ch in self.widths:
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape(x.shape[0], -1))
        feats = nn.relu(nn.Dense(self.n_features)(x))
        h = nn.Dropout(self.dropout, deterministic=not train)(feats)
        return nn.Dense(self.n_classes)(h), feats


def feature_net(n_classes: int, recipe: dict) -> FeatureNet:
    return FeatureNet(
        n_classes,
        widths=tuple(recipe.get("widths", (32, 64))),
        dropout=float(recipe.get("dropout", 0.0)),
    )


def _inputs(images: np.ndarray, vocab_size: int) -> jnp.ndarray:
    """Integers → bin centres in (−1, 1), as the diffusion model sees them."""
    return jnp.asarray((2.0 * np.asarray(images, np.float32) + 1.0) / vocab_size - 1.0)


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random translations by up to ± max_shift whole pixels (zero padding)."""
    if not max_shift:
        return images
    n, h, w, _ = images.shape
    pad = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _smooth(field: jax.Array, sigma: float) -> jax.Array:
    """A (n, h, w) field blurred by a Gaussian of `sigma` pixels (separable, zero padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = jnp.exp(-0.5 * jnp.square(jnp.arange(-radius, radius + 1) / sigma))
    taps = taps / taps.sum()
    blur = lambda v: jnp.convolve(jnp.pad(v, radius), taps, mode="valid")  # noqa: E731
    field = jax.vmap(jax.vmap(blur))(field)  # along w
    return jax.vmap(jax.vmap(blur, in_axes=1, out_axes=1))(field)  # along h


def random_affine(key, x, rotate: float, scale: float, shift: float, elastic=0.0, sigma=4.0):
    """Random rotations (± `rotate` degrees), zooms (× 1 ± `scale`) and translations (±
    `shift` pixels) of a batch in model space (background −1), bilinear, on the device; with
    `elastic` > 0 also an elastic distortion (Simard et al. 2003): a displacement field of
    uniform(−1, 1) noise per pixel and axis, blurred by a Gaussian of `sigma` pixels and
    scaled by `elastic` pixels."""
    n, h, w, _ = x.shape
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    theta = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-rotate, maxval=rotate))
    zoom = jax.random.uniform(k_scale, (n,), minval=1 - scale, maxval=1 + scale)
    offset = jax.random.uniform(k_shift, (n, 2), minval=-shift, maxval=shift)
    if elastic:
        noise = draws.uniform(jax.random.fold_in(key, 3), (2, n, h, w), minval=-1.0, maxval=1.0)
        disp = elastic * jax.vmap(_smooth, in_axes=(0, None))(noise, sigma)
    else:
        disp = jnp.zeros((2, n, h, w))
    yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

    def one(img, theta, zoom, offset, dy, dx):  # where each output pixel comes from
        c, s = jnp.cos(theta), jnp.sin(theta)
        src_y = (c * yy - s * xx) / zoom + (h - 1) / 2 - offset[0] + dy
        src_x = (s * yy + c * xx) / zoom + (w - 1) / 2 - offset[1] + dx
        out = [
            jax.scipy.ndimage.map_coordinates(img[..., k], [src_y, src_x], 1, cval=-1.0)
            for k in range(img.shape[-1])
        ]
        return jnp.stack(out, -1)

    return jax.vmap(one)(x, theta, zoom, offset, disp[0], disp[1])


@dataclasses.dataclass
class Classifier:
    """A trained feature network: `features(images)` and `accuracy(images, labels)`."""

    net: FeatureNet
    params: dict
    vocab_size: int
    info: dict

    def __post_init__(self):
        self._apply = jax.jit(lambda p, x: self.net.apply({"params": p}, x))

    def _run(self, images: np.ndarray, batch: int = 500):
        outs = [
            self._apply(self.params, _inputs(images[i : i + batch], self.vocab_size))
            for i in range(0, len(images), batch)
        ]
        logits, feats = (np.concatenate([np.asarray(o[k]) for o in outs]) for k in (0, 1))
        return logits, feats

    def features(self, images: np.ndarray) -> np.ndarray:
        """The 128 penultimate-layer features of integer images, float64."""
        return self._run(images)[1].astype(np.float64)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        logits, _ = self._run(images)
        return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def recipe_hash(data_name: str, vocab_size: int, shape, n_train: int, recipe: dict) -> str:
    spec = {"format": FORMAT, "data": data_name, "vocab": vocab_size, "shape": list(shape)}
    spec.update(n_train=n_train, recipe=recipe)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> str:
    root = os.environ.get("VDM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vdm"
    )
    return os.path.join(root, "classifiers")


def train_classifier(train, test, vocab_size: int, recipe: dict, log=None) -> Classifier:
    """Train FeatureNet on a split (`data.Split` with labels) with a fixed seed; returns it
    with its test accuracy in `info`.

    Recipe: epochs, batch, lr (cosine decay, after `warmup_epochs` of linear warm-up), seed;
    augmentation by whole-pixel shifts (`shift`), or with `rotate` (degrees) a random affine
    map on the device (rotation, zoom ± `scale`, shift, and an elastic distortion of
    `elastic` pixels smoothed over `elastic_sigma`); `dropout`, `widths` and AdamW's
    `weight_decay` where given; with `ema` the classifier is the exponential moving average
    of the weights at that decay (Polyak averaging), not the last iterate."""
    r = recipe
    x_all = train.get(np.arange(len(train)))
    images, labels = x_all["image"], x_all["label"]
    net = feature_net(train.num_classes, r)
    key = jax.random.key(r["seed"])
    params = net.init(key, _inputs(images[:1], vocab_size))["params"]
    steps_per_epoch = math.ceil(len(images) / r["batch"])
    total = r["epochs"] * steps_per_epoch
    warmup = r.get("warmup_epochs", 0) * steps_per_epoch
    if warmup:
        lr = optax.warmup_cosine_decay_schedule(0.0, r["lr"], warmup, total)
    else:
        lr = optax.cosine_decay_schedule(r["lr"], total)
    opt = optax.adamw(lr, weight_decay=r["weight_decay"]) if "weight_decay" in r else optax.adam(lr)
    opt_state = opt.init(params)
    affine = "rotate" in r

    ema = float(r.get("ema", 0.0))

    @jax.jit
    def step(params, avg, opt_state, x, y, key):
        k_aug, k_drop = jax.random.split(key)
        if affine:
            x = random_affine(
                k_aug,
                x,
                r["rotate"],
                r.get("scale", 0.0),
                r.get("shift", 0.0),
                r.get("elastic", 0.0),
                r.get("elastic_sigma", 4.0),
            )

        def loss_fn(p):
            logits, _ = net.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        avg = jax.tree.map(lambda a, p: ema * a + (1 - ema) * p, avg, params) if ema else avg
        return params, avg, opt_state, loss

    avg = params
    rng = np.random.default_rng(r["seed"])
    for epoch in range(r["epochs"]):
        perm = rng.permutation(len(images))
        for i in range(steps_per_epoch):
            idx = perm[i * r["batch"] : (i + 1) * r["batch"]]
            if len(idx) < r["batch"]:  # one compiled shape: top up from the epoch's start
                idx = np.concatenate([idx, perm[: r["batch"] - len(idx)]])
            batch = images[idx] if affine else _shift(images[idx], rng, r["shift"])
            k = jax.random.fold_in(key, epoch * steps_per_epoch + i)
            y = jnp.asarray(labels[idx])
            params, avg, opt_state, loss = step(
                params, avg, opt_state, _inputs(batch, vocab_size), y, k
            )
        if log:
            log(f"classifier epoch {epoch + 1}/{r['epochs']}: loss {float(loss):.4f}")
    clf = Classifier(net, avg if ema else params, vocab_size, {"recipe": r})
    t = test.get(np.arange(len(test)))
    clf.info["test_accuracy"] = clf.accuracy(t["image"], t["label"])
    clf.info["n_test"] = len(test)
    return clf


def load_or_train(data_cfg, recipe: dict | None = None, log=None) -> Classifier:
    """The cached classifier for `data_cfg` (trained and cached on first use)."""
    from vdm import data

    if recipe is None:
        if data_cfg.name not in RECIPES:
            raise ValueError(
                f"FID needs a classifier recipe for data.name; one of {sorted(RECIPES)}, "
                f"got {data_cfg.name!r}"
            )
        recipe = RECIPES[data_cfg.name]
    train = data.load_split(data_cfg, "train")
    test = data.load_split(data_cfg, "test")
    vocab = data_cfg.vocab_size
    h = recipe_hash(data_cfg.name, vocab, train.shape, len(train), recipe)
    path = os.path.join(cache_dir(), f"{data_cfg.name}_{h}")
    net = feature_net(train.num_classes, recipe)
    if os.path.exists(path + ".json") and os.path.exists(path + ".msgpack"):
        with open(path + ".json") as f:
            info = json.load(f)
        template = net.init(jax.random.key(0), jnp.zeros((1, *train.shape)))["params"]
        with open(path + ".msgpack", "rb") as f:
            params = serialization.from_bytes(template, f.read())
        return Classifier(net, params, vocab, info)
    clf = train_classifier(train, test, vocab, recipe, log)
    os.makedirs(cache_dir(), exist_ok=True)
    for suffix, blob in (
        (".msgpack", serialization.to_bytes(clf.params)),
        (".json", json.dumps(clf.info, indent=1).encode()),
    ):
        tmp = f"{path}{suffix}.tmp{os.getpid()}"
        with signals.writing(path + suffix), open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path + suffix)
    return clf


# ---- The distance ----


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """‖μ_a − μ_b‖² + tr C_a + tr C_b − 2 tr (C_a^{½} C_b C_a^{½})^{½}, by symmetric
    eigendecompositions (stable where scipy's sqrtm of a non-symmetric product is not)."""
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)
    return max(d, 0.0)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*stats(features_a), *stats(features_b))


def fid_se(sample_feature_sets: list[np.ndarray], reference: np.ndarray) -> tuple[float, float]:
    """Mean FID over sets drawn with different seeds and its standard error."""
    ref = stats(reference)
    vals = np.array([frechet_distance(*stats(f), *ref) for f in sample_feature_sets])
    se = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(vals.mean()), se
