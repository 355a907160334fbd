"""Losses that PGD optimises: the surrogate's denoising loss and, for latent surrogates, the encoder term.

``unlearnable`` (min-min) makes the perturbation a shortcut that lowers the
denoising loss; ``adversarial`` (max) raises it against a frozen surrogate;
``encoder`` (latent surrogates only) moves the VAE latent itself: away from the
clean image's latent, or toward a target pattern's (PhotoGuard / Mist). The
encoder term can also be added to either denoising objective with
``encoder_weight``. All randomness (t, noise) comes from per-sample generators, so
a sample's protection does not depend on which batch it landed in.

Two METHOD.md leads live here too. A surrogate *pool* (``fit_pool``): PGD step k
uses training stage k mod n, so delta must work along the victim's whole run.
``matching`` targets the training trajectory instead of a frozen model: a victim's
SGD step on x_i + d_i changes the clean loss by about -lr * g . grad l_i(x_i + d_i),
where g is the gradient of the surrogate's loss on clean data (saved by fit). PGD
therefore *minimises* the directional derivative of l_i along g, computed per
sample as a central difference [l_i(theta + h g) - l_i(theta - h g)] / 2h with the
weights swapped in by ``torch.func.functional_call``: two forward passes, no
double backprop, and samples stay independent (unlike batch-level Witches' Brew).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import ProtectionConfig
from ..models.base import Surrogate, SurrogateError
from .eot import apply_eot
from .pgd import LossFn
from .timesteps import TimestepSampler


class ProtectionObjective:
    """Per-sample loss of perturbed images, with the direction PGD should move it (``maximize``).

    The combined loss is ``d + w * g`` (adversarial and aspl, maximised), ``d - w * g``
    (unlearnable, minimised) or ``g`` (encoder, maximised), where ``d`` is the
    weighted denoising loss E_t,eps ||eps - eps_theta(x_t, t, c)||^2 and ``g`` the
    encoder gain: ||z - z_clean||^2 (``away``) or -||z - z_target||^2 (``pattern``),
    both means over latent elements (sums with ``encoder_reduction='sum'``, Mist's convention).
    For ``sds`` the denoiser term ``d`` is the
    score-distillation loss instead (minimised, see :meth:`_sds_loss`); for ``ace`` (Mist v2) it is
    ||eps_theta(z_t, t) - z_target||^2 (minimised, see :meth:`_ace_loss`), so ``d - w * g``.
    """

    def __init__(self, surrogate: Surrogate, config: ProtectionConfig):
        self.surrogate = surrogate
        self.config = config
        self.uses_denoiser = config.objective != "encoder"
        self.encoder_weight = 1.0 if config.objective == "encoder" else float(config.encoder_weight)
        self.uses_encoder = self.encoder_weight > 0
        if self.uses_encoder and surrogate.kind != "latent":
            raise SurrogateError(
                f"objective={config.objective!r} with encoder_weight={config.encoder_weight} needs a latent "
                "surrogate (a VAE to attack): pass a Stable Diffusion folder or an AutoencoderKL + UNet pair "
                "as --surrogate, or set encoder_weight=0")
        self.maximize = config.objective in ("adversarial", "encoder", "aspl")
        self.matching = config.objective == "matching"
        self.sds = config.objective == "sds"
        self.ace = config.objective == "ace"
        if self.ace and surrogate.kind != "latent":
            raise SurrogateError("objective='ace' (Mist v2) pulls the denoiser's output toward a target image's "
                                 "VAE latent: it needs a latent surrogate (--surrogate taef2, a Stable Diffusion "
                                 "folder or a VAE + UNet pair)")
        if self.sds and surrogate.kind != "latent":
            raise SurrogateError("objective='sds' distils the score through a VAE encoder: it needs a latent "
                                 "surrogate (pass a Stable Diffusion folder or a VAE + UNet pair as --surrogate)")
        self._members = self._pool_members()
        self._fd_step: dict[int, float] = {}
        # ||E(x + d) - E(x)||^2 has zero gradient at d = 0: PGD must start inside the ball
        self.needs_random_start = config.objective == "encoder" and config.encoder_target == "away"
        self.sampler = TimestepSampler(surrogate.alphas_cumprod, config)
        self.draws = config.noise_draws
        self._target: torch.Tensor | None = None
        self.eot = config.eot_transforms

    # ---------------------------------------------------------------- pool
    def _pool_members(self) -> list[tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]]:
        """(weights, clean-loss direction) per pool member; weights ``None`` = the loaded ones.

        Both are moved to the UNet's device and dtype once here, not at every PGD step.
        """
        s = self.surrogate
        ref = next(s.unet.parameters())

        def placed(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in group.items()}

        stages = [placed(s.extras_group(f"stage{k}")) for k in range(s.num_stages())] + [None]
        members = []
        for k, weights in enumerate(stages):
            direction = None
            if self.matching:
                direction = s.extras_group(f"direction{k if weights is not None else -1}")
                if not direction:
                    raise SurrogateError(
                        "objective='matching' needs the clean-loss gradient direction that "
                        "`Protector.fit` / `udp-datasets fit` saves with the surrogate "
                        f"({'stage ' + str(k) if weights is not None else 'final weights'} has none); fit "
                        "the surrogate with objective='matching' first")
            members.append((weights, placed(direction) if direction is not None else None))
        return members

    def _member_params(self, step: int) -> dict[str, torch.Tensor] | None | tuple:
        """Weights for PGD step ``step``: a pool stage, or (theta + h g, theta - h g, h) for matching."""
        member = step % len(self._members)
        weights, direction = self._members[member]
        if weights is not None or direction is not None:
            params = dict(self.surrogate.unet.named_parameters())
            if weights is not None:
                params = {k: weights.get(k, v) for k, v in params.items()}
            if direction is None:
                return params
            if member not in self._fd_step:  # the weights are frozen: one norm per member, not per step
                norm = torch.sqrt(sum(v.float().pow(2).sum() for v in params.values()))
                self._fd_step[member] = float(1e-3 * norm)
            h = self._fd_step[member]
            plus = {k: v + h * direction[k] if k in direction else v for k, v in params.items()}
            minus = {k: v - h * direction[k] if k in direction else v for k, v in params.items()}
            return plus, minus, h
        return None

    # ------------------------------------------------------------ randomness
    def draw(self, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's randomness: timesteps (B*K,), loss weights (B*K,), noise (B*K, C, h, w)."""
        ts, ws, noises = [], [], []
        for g in generators:
            t, w = self.sampler.sample(g, self.draws)
            ts.append(t)
            ws.append(w)
            noises.append(torch.randn((self.draws, *self.surrogate.model_shape), generator=g))
        return torch.cat(ts), torch.cat(ws), torch.cat(noises)

    # ------------------------------------------------------------ conditions
    def prompts(self, n: int, captions: Sequence[str | None] | None = None) -> list[str] | None:
        """One prompt per image for a text-conditioned surrogate, else ``None``."""
        if not self.surrogate.conditional:
            return None
        from ..models.latent import prompts_for

        return prompts_for(self.config.prompt, captions, n)

    def condition(self, n: int, captions: Sequence[str | None] | None = None) -> torch.Tensor | None:
        """Text condition (CLIP hidden states) for a conditional surrogate, else ``None``."""
        prompts = self.prompts(n, captions)
        return None if prompts is None else self.surrogate.encode_text(prompts)

    @torch.no_grad()
    def target_latent(self) -> torch.Tensor:
        """E(target): the latent of ``target_image`` (or the built-in pattern), (1, C, h, w), cached."""
        if self._target is None or self._target.device != self.surrogate.device:
            from ..models.latent import load_target

            h, w = self.surrogate.image_size
            target = load_target(self.config.target_image, h, w, self.surrogate.image_channels)
            self._target = self.surrogate.encode(target.to(self.surrogate.device))
        return self._target

    @torch.no_grad()
    def reference(self, clean: torch.Tensor | None) -> torch.Tensor | None:
        """What the encoder gain measures from: E(clean) (``away``) or E(target) (``pattern``)."""
        if not self.uses_encoder:
            return None
        if self.config.encoder_target == "pattern":
            return self.target_latent()
        if clean is None:
            raise ValueError("the encoder objective (encoder_target='away') needs the clean images")
        return self.surrogate.encode(clean)

    # ------------------------------------------------------------------ loss
    def loss(self, x01: torch.Tensor, t: torch.Tensor, weights: torch.Tensor, noise: torch.Tensor,
             cond: torch.Tensor | None = None, reference: torch.Tensor | None = None,
             step: int = 0) -> torch.Tensor:
        """Per-sample combined loss of images ``x01`` in [0, 1] (see the class docstring)."""
        device = x01.device
        z = self.surrogate.to_model_space(x01)
        total = torch.zeros(x01.shape[0], device=device)
        if self.uses_denoiser:
            z0, c = z, cond
            if self.draws > 1:
                z0 = z.repeat_interleave(self.draws, dim=0)
                c = None if cond is None else cond.repeat_interleave(self.draws, dim=0)
            noise, t = noise.to(device=device, dtype=z.dtype), t.to(device)
            params = self._member_params(step)
            if self.sds:
                per = self._sds_loss(z0, noise, t, c)
            elif self.ace:
                per = self._ace_loss(z0, noise, t, c, params)
            elif isinstance(params, tuple):  # matching: directional derivative along the clean gradient
                plus, minus, h = params
                per = (self.surrogate.denoising_loss(z0, noise, t, c, plus)
                       - self.surrogate.denoising_loss(z0, noise, t, c, minus)) / (2 * h)
            else:
                per = self.surrogate.denoising_loss(z0, noise, t, c, params)
            total = total + (per * weights.to(device)).view(x01.shape[0], self.draws).mean(1)
        if self.uses_encoder:
            assert reference is not None
            dist = (z.float() - reference.float()).pow(2).flatten(1)
            dist = dist.sum(1) if self.config.encoder_reduction == "sum" else dist.mean(1)
            gain = -dist if self.config.encoder_target == "pattern" else dist
            # objective='encoder': maximize with weight 1, i.e. the gain alone
            total = total + (1 if self.maximize else -1) * self.encoder_weight * gain
        return total

    def _sds_loss(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  cond: torch.Tensor | None) -> torch.Tensor:
        """Per-sample SDS loss: its gradient w.r.t. z is w(t) (eps_hat - eps), w(t) = 1 - abar_t, with the
        denoiser's Jacobian skipped (eps_hat is computed without a graph), so only the encoder is
        back-propagated. PGD *descends* it (SDS-)."""
        abar = self.surrogate._abar(z0.device)[t].to(z0.dtype).view(-1, 1, 1, 1)
        with torch.no_grad():
            eps_hat = self.surrogate.predict_noise(abar.sqrt() * z0 + (1 - abar).sqrt() * noise, t, cond)
            direction = ((1 - abar) * (eps_hat - noise.float())).to(z0.dtype)
        return (direction * z0).flatten(1).mean(1).float()

    def _ace_loss(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                  params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Per-sample ACE loss (Mist v2): mean over latent elements of (eps_theta(z_t, t) - z_target)^2, the
        denoiser's raw output against the target's model-space latent, as psyker-team/mist-v2's
        ``attacks/mist.py`` (``pgd_attack``, mode ``lunet``: ``loss = -F.mse_loss(model_pred, target_tensor)``,
        ascended, i.e. the distance descended). PGD *descends* it."""
        abar = self.surrogate._abar(z0.device)[t].to(z0.dtype).view(-1, 1, 1, 1)
        pred = self.surrogate.predict(abar.sqrt() * z0 + (1 - abar).sqrt() * noise, t, cond, params)
        target = self.target_latent().to(device=pred.device, dtype=torch.float32)
        return (pred.float() - target).pow(2).flatten(1).mean(1)

    def loss_fn(self, generators: Sequence[torch.Generator], clean: torch.Tensor | None = None,
                captions: Sequence[str | None] | None = None) -> LossFn:
        """The closure PGD calls each step; it advances every sample's own generator.

        ``clean`` (the unperturbed batch) is needed by the ``away`` encoder term; ``captions``
        fill the prompt template of a text-conditioned surrogate.
        """
        cond = self.condition(len(generators), captions)
        if isinstance(clean, (list, tuple)):  # a mixed batch: images of several sizes
            clean = self.working_batch(clean)
        reference = self.reference(clean)

        def fn(x_adv: torch.Tensor | Sequence[torch.Tensor], step: int) -> torch.Tensor:
            t, w, noise = self.draw(generators)
            if isinstance(x_adv, (list, tuple)):
                x = self.working_batch([apply_eot(xi, self.eot, [g]) for xi, g in zip(x_adv, generators)])
            else:
                x = apply_eot(x_adv, self.eot, generators)
            return self.loss(x, t, w, noise, cond, reference, step)

        return fn

    def working_batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images of different sizes (each (1, C_i, H_i, W_i)) -> one batch at the surrogate's working
        size: each is resized (differentiably) on its own, so one forward pass serves them all."""
        return torch.cat([self.surrogate.fit_pixels(x) for x in images])

    @torch.no_grad()
    def evaluate(self, x01: torch.Tensor, generators: Sequence[torch.Generator], repeats: int = 4,
                 clean: torch.Tensor | None = None, captions: Sequence[str | None] | None = None) -> torch.Tensor:
        """Average per-sample loss over ``repeats`` draws (used by checks and reports)."""
        fn = self.loss_fn(generators, clean if clean is not None else x01, captions)
        return sum(fn(x01, i).float().cpu() for i in range(repeats)) / repeats

