"""Grad-CAM (Fig. 6): where the protected model looks on authorized and clean images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from activedaemon.attacks.base import AttackContext, AttackResult, register_attack


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for ``classes`` at the last conv layer (Selvaraju et
    al., ICCV 2017): ReLU of the activations weighted by their spatially averaged gradients.
    Written here (20 lines) rather than taken from the grad-cam package, which pulls in OpenCV."""
    layer = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    saved: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: saved.update(act=out))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(images)
            score = logits.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(score, saved["act"])
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * saved["act"]).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak


@register_attack("gradcam")
def gradcam(ctx: AttackContext, samples: int | None = None) -> AttackResult:
    """Grad-CAM heat maps for the true class on authorized and on clean test images (Fig. 6),
    saved as a figure; the mean cosine similarity of the two maps of each image says whether the
    model attends to the same place with and without a token.

    Threat model: an analyst with the model's weights looks for a visible trigger region (as
    SentiNet-style defences do); no token.
    """
    k = samples or (4 if ctx.fast else 8)
    x, y, xa = ctx.test_x[:k], ctx.test_y[:k], ctx.authorized[:k]
    cam_clean, cam_auth = grad_cam(ctx.model, x, y), grad_cam(ctx.model, xa, y)
    cosine = F.cosine_similarity(cam_clean.flatten(1), cam_auth.flatten(1), dim=1)
    result = AttackResult(
        {"cam_cosine_clean_vs_authorized": cosine.mean().item()},
        params={"samples": k},
    )
    if ctx.out is not None:
        from activedaemon.attacks.figures import save_image_rows

        heat = lambda c: c[:, None].expand(-1, 3, -1, -1)  # noqa: E731
        path = save_image_rows(
            {
                "authorized": xa,
                "Grad-CAM (authorized)": heat(cam_auth),
                "clean": x,
                "Grad-CAM (clean)": heat(cam_clean),
            },
            ctx.out / "gradcam.png",
            heat_rows=("Grad-CAM (authorized)", "Grad-CAM (clean)"),
        )
        result.figures.append(str(path))
    return result
