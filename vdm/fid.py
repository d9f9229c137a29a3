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

FORMAT = 1
RECIPES = {  # per data set: what the classifier is trained with
    "digits": {"epochs": 40, "batch": 64, "lr": 2e-3, "shift": 1, "seed": 0},
    "mnist": {"epochs": 30, "batch": 128, "lr": 1e-3, "shift": 2, "seed": 0},
    "fashion_mnist": {"epochs": 8, "batch": 128, "lr": 1e-3, "shift": 2, "seed": 0},
}


class FeatureNet(nn.Module):
    """Two conv blocks (32, 64 channels, 2× average pooling each) → 128 features → logits."""

    n_classes: int
    n_features: int = 128

    @nn.compact
    def __call__(self, x):
        for ch in (32, 64):
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        feats = nn.relu(nn.Dense(self.n_features)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.n_classes)(feats), feats


def _inputs(images: np.ndarray, vocab_size: int) -> jnp.ndarray:
    """Integers → bin centres in (−1, 1), as the diffusion model sees them."""
    return jnp.asarray((2.0 * np.asarray(images, np.float32) + 1.0) / vocab_size - 1.0)


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random translations by up to ± max_shift pixels (zero padding): the augmentation."""
    if not max_shift:
        return images
    n, h, w, _ = images.shape
    pad = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


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
    with its test accuracy in `info`."""
    r = recipe
    x_all = train.get(np.arange(len(train)))
    images, labels = x_all["image"], x_all["label"]
    net = FeatureNet(train.num_classes)
    key = jax.random.key(r["seed"])
    params = net.init(key, _inputs(images[:1], vocab_size))["params"]
    steps_per_epoch = math.ceil(len(images) / r["batch"])
    lr = optax.cosine_decay_schedule(r["lr"], r["epochs"] * steps_per_epoch)
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits, _ = net.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(r["seed"])
    for epoch in range(r["epochs"]):
        perm = rng.permutation(len(images))
        for i in range(steps_per_epoch):
            idx = perm[i * r["batch"] : (i + 1) * r["batch"]]
            if len(idx) < r["batch"]:  # one compiled shape: top up from the epoch's start
                idx = np.concatenate([idx, perm[: r["batch"] - len(idx)]])
            x = _inputs(_shift(images[idx], rng, r["shift"]), vocab_size)
            params, opt_state, loss = step(params, opt_state, x, jnp.asarray(labels[idx]))
        if log:
            log(f"classifier epoch {epoch + 1}/{r['epochs']}: loss {float(loss):.4f}")
    clf = Classifier(net, params, vocab_size, {"recipe": r})
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
    net = FeatureNet(train.num_classes)
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
        with open(tmp, "wb") as f:
            f.write(blob)
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
